"""Artifacts: pick KIWI's results out of its target directory, add checksums and the build
record, and swap the whole set into ``--out`` in one atomic exchange.

Step four of the flow.  Everything is assembled in a staging directory beside ``--out`` (same
filesystem, so the final ``rename`` is atomic): a failed or interrupted build never leaves a
half-written artifact in ``--out``, and a previous good build there is only replaced by a
complete new one.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from .compose import MANIFEST_PATH
from ..core.errors import BuildError
from ..core.redact import url_passwords
from .kiwi import IMAGE_ROOT
from .staging import BUILD_RECORD, published_image_file
from ..distros.clouds import QEMU, Cloud

# kiwi.result.json keys we publish, under KIWI's own file names.  The raw disk is left out when
# there is a disk_format_image (qcow2, vmdk): that holds the same disk in a fraction of the space.
PUBLISHED_RESULTS = ("disk_format_image", "disk_format_machine_settings", "image_packages",
                     "image_verified", "image_changes")
CHUNK = 4 * 1024 * 1024
# KIWI's state XML in its image root: the description as KIWI applied it, repositories included.
KIWI_STATE = IMAGE_ROOT / "image" / "config.xml"
OVERLAY_MANIFEST = "overlay-manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def collect(kiwi_target: Path, publish_dir: Path, cloud: Cloud = QEMU) -> dict[str, Path]:
    """Move KIWI's results (per kiwi.result.json) into ``publish_dir``; return key -> path,
    with the disk image (formatted, or raw when the description asks for no format) as "image",
    named as ``cloud``'s tools expect (KIWI's gce tar.gz as it is, its .vhdfixed as .vhd)."""
    try:
        results = json.loads((kiwi_target / "kiwi.result.json").read_text())
    except (OSError, ValueError) as error:
        raise BuildError(f"KIWI left no readable kiwi.result.json in {kiwi_target}: {error}")
    image_key = "disk_format_image" if "disk_format_image" in results else "disk_image"
    if image_key not in results:
        raise BuildError("KIWI's result names no disk image")
    if "image_packages" not in results:
        raise BuildError("KIWI's result names no package list (the SBOM is made from it)")
    published: dict[str, Path] = {}
    for key in dict.fromkeys((image_key, *PUBLISHED_RESULTS)):
        if key in results:
            source = Path(results[key]["filename"])
            target = publish_dir / (published_image_file(source.name, cloud) if key == image_key
                                    else source.name)
            shutil.move(source, target)
            published[key] = target
    # Keep KIWI's result file, pointing at the published names.
    for key, entry in results.items():
        entry["filename"] = published[key].name if key in published else None
    (publish_dir / "kiwi.result.json").write_text(json.dumps(results, indent=4, sort_keys=True) + "\n")
    return {**published, "image": published[image_key]}


def overlay_manifest(composed: Path, publish_dir: Path) -> Path:
    """The manifest of the overlay's files that the composition placed in the image, beside it
    (``validate --manifest`` compares the image with it)."""
    return Path(shutil.copy(composed / "root" / MANIFEST_PATH, publish_dir / OVERLAY_MANIFEST))


def description(composed: Path, kiwi_target: Path, destination: Path,
                redact: Callable[[str], str]) -> None:
    """The composed description, plus KIWI's state XML as ``kiwi-expanded.xml`` (secrets
    redacted: the repositories in it may carry tokens)."""
    shutil.copytree(composed, destination, symlinks=True)
    state = kiwi_target / KIWI_STATE
    if state.is_file():
        (destination / "kiwi-expanded.xml").write_text(redact(state.read_text()))


def write_checksum(path: Path) -> str:
    """``<file>.sha256`` in sha256sum's format, so ``sha256sum -c`` verifies it."""
    digest = sha256_file(path)
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def artifact_digests(publish_dir: Path, known: dict[str, str]) -> dict[str, dict]:
    """Digest and size of every published file; ``known`` (name -> sha256) spares re-reading
    the disk image, which write_checksum already hashed."""
    return {path.name: {"sha256": known.get(path.name) or sha256_file(path), "bytes": path.stat().st_size}
            for path in sorted(publish_dir.iterdir()) if path.is_file() and path.name != BUILD_RECORD}


class Relocation:
    """Rewrite the paths in a record (every string, however deep) from where a build made its
    files to where they end up: ``{staged directory: final path}``, longest first."""

    def __init__(self, moves: dict[Path, str]):
        # A whole path component only: ``staging/description`` is not ``staging/description-x``.
        self.moves = [(re.compile(re.escape(str(staged)) + r"(?![^/\s,:;\"'])"), final)
                      for staged, final in sorted(moves.items(), key=lambda move: len(str(move[0])),
                                                  reverse=True)]

    def __call__(self, value):
        if isinstance(value, str):
            for staged, final in self.moves:
                value = staged.sub(lambda _match, final=final: final, value)
            return value
        if isinstance(value, dict):
            return {key: self(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self(item) for item in value]
        return value


def write_json(path: Path, data: dict) -> None:
    path.write_text(url_passwords(json.dumps(data, indent=2, sort_keys=True)) + "\n")


def replace_directory(new: Path, destination: Path) -> None:
    """Put ``new`` at ``destination`` with no moment without a ``destination``: an existing one
    is exchanged with ``new`` in one ``renameat2(RENAME_EXCHANGE)`` and then removed from where
    ``new`` was.  Kernels or filesystems without it get rename-aside (a short gap)."""
    try:
        _renameat2(new, destination, RENAME_EXCHANGE)
    except FileNotFoundError:  # no previous output
        _renameat2(new, destination, RENAME_NOREPLACE)
        return
    except _Unsupported:
        _rename_aside(new, destination)
        return
    _remove(new)  # the previous output, now where ``new`` was


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100


class _Unsupported(Exception):
    pass


def _renameat2(source: Path, target: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        raise _Unsupported
    if libc.renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), flags) == 0:
        return
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL) and flags == RENAME_EXCHANGE:
        raise _Unsupported
    if error in (errno.ENOSYS, errno.EINVAL):  # RENAME_NOREPLACE unsupported: plain rename
        os.rename(source, target)
        return
    raise OSError(error, os.strerror(error), str(target))


def _rename_aside(new: Path, destination: Path) -> None:
    previous = new.parent / (new.name + ".previous")
    os.rename(destination, previous)
    os.rename(new, destination)
    _remove(previous)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
