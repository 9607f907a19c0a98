"""Read-only access to the file systems inside the raw disk, through e2fsprogs and mtools.

Both tools take a byte offset into the disk file, so nothing is mounted, copied or written.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from .tools import message, run

NOT_FOUND = "File not found by ext2_lookup"


class FilesystemError(Exception):
    """The file system cannot be read at all (bad superblock, not ext4, truncated disk)."""


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    size: int

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


class Ext4:
    """An ext2/3/4 file system at ``offset`` in ``raw``, read with ``debugfs -R`` (never ``-w``)."""

    def __init__(self, raw: Path, offset: int):
        self.device = f"{raw}?offset={offset}"
        self.uuid = self._superblock_field("Filesystem UUID")

    def _debugfs(self, request: str) -> tuple[bytes, list[str]]:
        """stdout and the error lines of one debugfs request (debugfs exits 0 even on errors)."""
        result = run(["debugfs", "-R", request, self.device])
        errors = [line for line in result.stderr.decode(errors="replace").splitlines()
                  if line.strip() and not line.startswith("debugfs ")]
        if any("while trying to open" in line or "not open" in line for line in errors):
            raise FilesystemError(message(result))
        return result.stdout, errors

    def _superblock_field(self, name: str) -> str:
        out, _ = self._debugfs("stats -h")
        for line in out.decode(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
        raise FilesystemError("no ext2/3/4 superblock")

    def read(self, path: str) -> bytes | None:
        """The content of a regular file, or None if it does not exist."""
        out, errors = self._debugfs(f'cat "{path}"')
        if any(NOT_FOUND in line for line in errors):
            return None
        if errors:
            raise FilesystemError(f"{path}: {errors[-1]}")
        return out

    def listdir(self, path: str) -> dict[str, Entry] | None:
        """The entries of a directory by name (without . and ..), or None if it does not exist."""
        out, errors = self._debugfs(f'ls -p "{path}"')
        if any(NOT_FOUND in line for line in errors):
            return None
        entries = {}
        # Each line is /inode/mode/uid/gid/name/size/; the mode is octal.
        for line in out.decode(errors="replace").splitlines():
            fields = line.split("/")
            if len(fields) == 8 and fields[5] not in (".", ".."):
                entries[fields[5]] = Entry(fields[5], int(fields[2], 8), int(fields[6] or 0))
        return entries

    def lookup(self, path: str) -> Entry | None:
        parent, _, name = path.rstrip("/").rpartition("/")
        return (self.listdir(parent or "/") or {}).get(name)


class Fat:
    """A FAT file system (the ESP) at ``offset`` in ``raw``, read with mtools' ``-i file@@offset``."""

    def __init__(self, raw: Path, offset: int):
        self.image = f"{raw}@@{offset}"
        probe = run(["mdir", "-i", self.image, "::/"])
        if probe.returncode != 0:
            raise FilesystemError(message(probe))

    def exists(self, path: str) -> bool:
        """FAT names are case-insensitive, as firmware treats them."""
        return run(["mdir", "-b", "-i", self.image, f"::{path}"]).returncode == 0

    def read(self, path: str) -> bytes | None:
        result = run(["mtype", "-i", self.image, f"::{path}"])
        return result.stdout if result.returncode == 0 else None
