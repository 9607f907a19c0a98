"""Read-only access to the file systems inside the disk: ext4 and FAT, parsed here.

Only the blocks a check asks for are read (superblock, group descriptor, inodes, extent trees,
directories, file data, extended attributes), straight from the disk, so nothing is mounted,
unpacked or written.
"""

from __future__ import annotations

import stat
import struct
import uuid
from dataclasses import dataclass

from .disk import Disk


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

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class FilesystemRegion:
    """The bytes of one file system: ``offset`` into the disk."""

    def __init__(self, disk: Disk, offset: int):
        self.disk, self.offset = disk, offset

    def read(self, offset: int, length: int) -> bytes:
        data = self.disk.read(self.offset + offset, length)
        if len(data) != length:
            raise FilesystemError(f"read past the end of the disk at byte {self.offset + offset}")
        return data


EXT4_MAGIC = 0xEF53
# Incompatible features this reader understands (filetype, needs_recovery, extents, 64bit, mmp,
# flex_bg, csum_seed, large_dir); any other (compression, journal_dev, meta_bg, inline_data,
# encrypt, casefold, ...) is refused: its files could not be read correctly.
EXT4_INCOMPAT_KNOWN = 0x0002 | 0x0004 | 0x0040 | 0x0080 | 0x0100 | 0x0200 | 0x2000 | 0x4000
EXTENTS_FLAG, EXTENT_MAGIC = 0x80000, 0xF30A
SYMLINK_DEPTH = 8
# Extended attributes (linux fs/ext4/xattr.h): the magic before the entries in an inode's extra
# space and in an xattr block, and the name prefix each entry's index stands for.
XATTR_MAGIC = 0xEA020000
XATTR_PREFIXES = {1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default",
                  4: "trusted.", 6: "security.", 7: "system.", 8: "system.richacl"}


class Ext4:
    """An ext2/3/4 file system at ``offset`` in ``disk``."""

    def __init__(self, disk: Disk, offset: int):
        self.part = FilesystemRegion(disk, offset)
        try:
            sb = self.part.read(1024, 1024)
        except FilesystemError as error:
            raise FilesystemError(f"no ext2/3/4 superblock: {error}")
        if struct.unpack_from("<H", sb, 0x38)[0] != EXT4_MAGIC:
            raise FilesystemError("no ext2/3/4 superblock")
        (self.first_data_block, log_block_size) = struct.unpack_from("<II", sb, 0x14)
        self.block_size = 1024 << log_block_size
        self.inodes_per_group = struct.unpack_from("<I", sb, 0x28)[0]
        revision = struct.unpack_from("<I", sb, 0x4C)[0]
        self.inode_size = struct.unpack_from("<H", sb, 0x58)[0] if revision else 128
        incompat = struct.unpack_from("<I", sb, 0x60)[0]
        if incompat & ~EXT4_INCOMPAT_KNOWN:
            raise FilesystemError(f"unsupported ext4 features (incompat 0x{incompat & ~EXT4_INCOMPAT_KNOWN:x})")
        self.desc_size = struct.unpack_from("<H", sb, 0xFE)[0] if incompat & 0x80 else 32
        if self.block_size > 65536 or not self.inodes_per_group or self.inode_size < 128 or self.desc_size < 32:
            raise FilesystemError("implausible ext2/3/4 superblock")
        self.uuid = str(uuid.UUID(bytes=sb[0x68:0x78]))
        self.label = sb[0x78:0x88].rstrip(b"\0").decode(errors="replace")
        high = incompat & 0x80  # 64bit: the counts' upper halves
        blocks = struct.unpack_from("<I", sb, 0x04)[0] | (struct.unpack_from("<I", sb, 0x150)[0] << 32 if high else 0)
        free = struct.unpack_from("<I", sb, 0x0C)[0] | (struct.unpack_from("<I", sb, 0x158)[0] << 32 if high else 0)
        self.used_blocks = blocks - free  # as of the last unmount

    def _block(self, number: int, count: int = 1) -> bytes:
        return self.part.read(number * self.block_size, count * self.block_size)

    def _inode(self, number: int) -> bytes:
        group, index = divmod(number - 1, self.inodes_per_group)
        descriptors = self.first_data_block + 1
        desc_offset = descriptors * self.block_size + group * self.desc_size
        desc = self.part.read(desc_offset, self.desc_size)
        table = struct.unpack_from("<I", desc, 0x8)[0]
        if self.desc_size >= 64:
            table |= struct.unpack_from("<I", desc, 0x28)[0] << 32
        return self.part.read(table * self.block_size + index * self.inode_size, self.inode_size)

    @staticmethod
    def _mode_size(inode: bytes) -> tuple[int, int]:
        mode, size_lo = struct.unpack_from("<H2xI", inode, 0)
        return mode, size_lo | struct.unpack_from("<I", inode, 0x6C)[0] << 32

    def _content(self, inode: bytes) -> bytes:
        mode, size = self._mode_size(inode)
        flags = struct.unpack_from("<I", inode, 0x20)[0]
        if stat.S_ISLNK(mode) and size < 60 and not flags & EXTENTS_FLAG:
            return inode[0x28:0x28 + size]  # fast symlink: the target sits in the block map
        data = bytearray(size)
        runs = self._extents(inode[0x28:0x64]) if flags & EXTENTS_FLAG else self._block_map(inode[0x28:0x64])
        for logical, physical, count in runs:
            start = logical * self.block_size
            if start >= size:
                continue
            count = min(count, -(-(size - start) // self.block_size))
            chunk = self._block(physical, count) if physical else bytes(count * self.block_size)
            data[start:start + len(chunk)] = chunk[:size - start]
        return bytes(data)

    def _extents(self, node: bytes, depth_limit: int = 8) -> list[tuple[int, int, int]]:
        """(logical block, physical block or 0 for unwritten, count) of an extent tree node."""
        magic, entries, _, depth = struct.unpack_from("<HHHH", node, 0)
        if magic != EXTENT_MAGIC or depth > depth_limit:
            raise FilesystemError("damaged extent tree")
        runs = []
        for i in range(entries):
            at = 12 + 12 * i
            if depth:
                _, leaf_lo, leaf_hi = struct.unpack_from("<IIH", node, at)
                runs += self._extents(self._block(leaf_hi << 32 | leaf_lo), depth - 1)
            else:
                logical, length, start_hi, start_lo = struct.unpack_from("<IHHI", node, at)
                unwritten = length > 32768
                runs.append((logical, 0 if unwritten else start_hi << 32 | start_lo,
                             length - 32768 if unwritten else length))
        return runs

    def _block_map(self, blocks: bytes) -> list[tuple[int, int, int]]:
        """ext2/3 block map: 12 direct blocks, then single, double and triple indirect ones."""
        pointers = struct.unpack("<15I", blocks)
        per_block = self.block_size // 4
        runs = [(i, block, 1) for i, block in enumerate(pointers[:12]) if block]
        logical = 12
        for level, block in enumerate(pointers[12:], 1):
            span = per_block ** level
            if block:
                runs += self._indirect(block, level, logical)
            logical += span
        return runs

    def _indirect(self, block: int, level: int, logical: int) -> list[tuple[int, int, int]]:
        pointers = struct.unpack(f"<{self.block_size // 4}I", self._block(block))
        if level == 1:
            return [(logical + i, target, 1) for i, target in enumerate(pointers) if target]
        span = (self.block_size // 4) ** (level - 1)
        return [run for i, target in enumerate(pointers) if target
                for run in self._indirect(target, level - 1, logical + i * span)]

    def _entries(self, directory: bytes) -> dict[str, int]:
        """name -> inode number in a directory's blocks (an htree's index blocks hold no live entries)."""
        found, position = {}, 0
        while position + 8 <= len(directory):
            number, rec_len, name_len, _ = struct.unpack_from("<IHBB", directory, position)
            if rec_len < 8:
                raise FilesystemError("damaged directory entry")
            name = directory[position + 8:position + 8 + name_len].decode(errors="surrogateescape")
            if number and name not in (".", ".."):
                found[name] = number
            position += rec_len
        return found

    def _resolve(self, path: str, follow_last: bool, depth: int = 0) -> tuple[int, bytes] | None:
        """(inode number, inode) at ``path``, following symbolic links (and ..) as the kernel does."""
        stack = [("", 2, self._inode(2))]  # (name, inode number, inode) from the root down
        parts = [part for part in path.split("/") if part not in ("", ".")]
        for index, part in enumerate(parts):
            if part == "..":
                stack = stack[:-1] or stack
                continue
            if not stat.S_ISDIR(self._mode_size(stack[-1][2])[0]):
                return None
            number = self._entries(self._content(stack[-1][2])).get(part)
            if number is None:
                return None
            inode = self._inode(number)
            last = index == len(parts) - 1
            if stat.S_ISLNK(self._mode_size(inode)[0]) and (follow_last or not last):
                if depth >= SYMLINK_DEPTH:
                    raise FilesystemError(f"{path}: too many levels of symbolic links")
                target = self._content(inode).decode(errors="surrogateescape")
                base = "" if target.startswith("/") else "/".join(name for name, _, _ in stack)
                return self._resolve(f"{base}/{target}/{'/'.join(parts[index + 1:])}", follow_last, depth + 1)
            stack.append((part, number, inode))
        return stack[-1][1], stack[-1][2]

    def read(self, path: str) -> bytes | None:
        """The content of a regular file (following symbolic links), or None if there is none."""
        found = self._resolve(path, follow_last=True)
        if found is None or not stat.S_ISREG(self._mode_size(found[1])[0]):
            return None
        return self._content(found[1])

    def data_offset(self, path: str, position: int = 0) -> int | None:
        """Where byte ``position`` of a regular file lies, from the file system's start (None for
        no such file, or a hole there).  How a test changes one byte of a file's data in place."""
        found = self._resolve(path, follow_last=True)
        if found is None or not stat.S_ISREG(self._mode_size(found[1])[0]):
            return None
        inode = found[1]
        extents = struct.unpack_from("<I", inode, 0x20)[0] & EXTENTS_FLAG
        runs = self._extents(inode[0x28:0x64]) if extents else self._block_map(inode[0x28:0x64])
        block, within = divmod(position, self.block_size)
        for logical, physical, count in runs:
            if physical and logical <= block < logical + count:
                return (physical + block - logical) * self.block_size + within
        return None

    def listdir(self, path: str) -> dict[str, Entry] | None:
        """The entries of a directory by name (without . and ..), or None if it does not exist."""
        found = self._resolve(path, follow_last=True)
        if found is None or not stat.S_ISDIR(self._mode_size(found[1])[0]):
            return None
        entries = {}
        for name, number in self._entries(self._content(found[1])).items():
            mode, size = self._mode_size(self._inode(number))
            entries[name] = Entry(name, mode, size)
        return entries

    def xattrs(self, path: str) -> dict[str, bytes] | None:
        """The extended attributes of what is at ``path`` (a symbolic link itself) by full name,
        e.g. ``security.selinux``: those in the inode's extra space, then those in its xattr
        block; None if nothing is there.  Values kept in an inode of their own are left out."""
        found = self._resolve(path, follow_last=False)
        if found is None:
            return None
        inode, attributes = found[1], {}
        if self.inode_size > 128:
            body = 0x80 + struct.unpack_from("<H", inode, 0x80)[0]  # after i_extra_isize
            if body + 4 <= len(inode) and struct.unpack_from("<I", inode, body)[0] == XATTR_MAGIC:
                entries = inode[body + 4:]  # value offsets count from the first entry
                attributes.update(self._xattr_entries(entries, entries))
        block = struct.unpack_from("<I", inode, 0x68)[0] | struct.unpack_from("<H", inode, 0x76)[0] << 32
        if block:
            data = self._block(block)
            if struct.unpack_from("<I", data, 0)[0] == XATTR_MAGIC:
                attributes.update(self._xattr_entries(data[32:], data))  # offsets from the block
        return attributes

    @staticmethod
    def _xattr_entries(entries: bytes, values: bytes) -> dict[str, bytes]:
        """ext4_xattr_entry records (16 bytes, the name, padded to 4) up to four zero bytes."""
        found, position = {}, 0
        while position + 16 <= len(entries) and entries[position:position + 4] != bytes(4):
            name_length, index, offset, value_inode, size = struct.unpack_from("<BBHII", entries, position)
            name = entries[position + 16:position + 16 + name_length].decode(errors="replace")
            if not value_inode:
                found[XATTR_PREFIXES.get(index, "") + name] = values[offset:offset + size]
            position += (16 + name_length + 3) & ~3
        return found

    def lookup(self, path: str) -> Entry | None:
        """What is at ``path`` itself (a symbolic link is not followed), or None."""
        found = self._resolve(path, follow_last=False)
        if found is None:
            return None
        mode, size = self._mode_size(found[1])
        return Entry(path.rstrip("/").rpartition("/")[2], mode, size)


FAT_DIRECTORY, FAT_VOLUME_LABEL, FAT_LONG_NAME = 0x10, 0x08, 0x0F


class Fat:
    """A FAT12/16/32 file system (the ESP) at ``offset`` in ``disk``; names match case-insensitively."""

    def __init__(self, disk: Disk, offset: int):
        self.part = FilesystemRegion(disk, offset)
        try:
            boot = self.part.read(0, 512)
        except FilesystemError as error:
            raise FilesystemError(f"no FAT boot sector: {error}")
        (sector, per_cluster, reserved, fats, root_entries, total16, _, fat16) = struct.unpack_from("<HBHBHHBH", boot, 11)
        total32, fat32 = struct.unpack_from("<II", boot, 32)
        if (boot[510:512] != b"\x55\xaa" or sector not in (512, 1024, 2048, 4096) or not per_cluster
                or per_cluster & (per_cluster - 1) or not reserved or not fats or not (fat16 or fat32)):
            raise FilesystemError("no FAT file system (bad boot sector)")
        fat_sectors = fat16 or fat32
        total = total16 or total32
        self.cluster_bytes = sector * per_cluster
        self.fat_offset = reserved * sector
        root_sectors = (root_entries * 32 + sector - 1) // sector
        self.root_offset = (reserved + fats * fat_sectors) * sector
        self.data_offset = self.root_offset + root_sectors * sector
        clusters = (total * sector - self.data_offset) // self.cluster_bytes
        self.bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.root_cluster = struct.unpack_from("<I", boot, 44)[0] if self.bits == 32 else 0
        self.root_size = root_sectors * sector
        self.fat = self.part.read(self.fat_offset, fat_sectors * sector)

    def _next(self, cluster: int) -> int:
        if self.bits == 32:
            return struct.unpack_from("<I", self.fat, cluster * 4)[0] & 0x0FFFFFFF
        if self.bits == 16:
            return struct.unpack_from("<H", self.fat, cluster * 2)[0]
        pair = struct.unpack_from("<H", self.fat, cluster * 3 // 2)[0]
        return pair >> 4 if cluster & 1 else pair & 0xFFF

    def _chain(self, first: int, size: int | None = None) -> bytes:
        end = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.bits]
        parts: list[bytes] = []
        cluster, seen = first, set()
        while 2 <= cluster < end and cluster not in seen and (size is None or len(parts) * self.cluster_bytes < size):
            seen.add(cluster)
            parts.append(self.part.read(self.data_offset + (cluster - 2) * self.cluster_bytes, self.cluster_bytes))
            cluster = self._next(cluster)
        data = b"".join(parts)
        return data if size is None else data[:size]

    def _entries(self, directory: bytes) -> dict[str, tuple[int, int, int]]:
        """UPPER-CASED long and short name -> (attributes, first cluster, size)."""
        found, long_name = {}, ""
        for at in range(0, len(directory) - 31, 32):
            entry = directory[at:at + 32]
            if entry[0] == 0:
                break
            if entry[0] == 0xE5:
                long_name = ""
                continue
            attributes = entry[11]
            if attributes == FAT_LONG_NAME:
                part = (entry[1:11] + entry[14:26] + entry[28:32]).decode("utf-16-le", errors="replace")
                long_name = part.split("\0")[0] + long_name if entry[0] & 0x40 == 0 else part.split("\0")[0]
                continue
            if attributes & FAT_VOLUME_LABEL:
                long_name = ""
                continue
            base, ext = entry[0:8].decode("cp437").rstrip(), entry[8:11].decode("cp437").rstrip()
            short = f"{base}.{ext}" if ext else base
            cluster = struct.unpack_from("<H", entry, 26)[0] | struct.unpack_from("<H", entry, 20)[0] << 16
            value = (attributes, cluster, struct.unpack_from("<I", entry, 28)[0])
            for name in {short, long_name} - {"", ".", ".."}:
                found[name.upper()] = value
            long_name = ""
        return found

    def _find(self, path: str) -> tuple[int, int, int] | None:
        directory = self.part.read(self.root_offset, self.root_size) if self.bits != 32 else self._chain(self.root_cluster)
        found: tuple[int, int, int] | None = (FAT_DIRECTORY, 0, 0)
        for part in [part for part in path.split("/") if part]:
            if found is None or not found[0] & FAT_DIRECTORY:
                return None
            if found[1]:
                directory = self._chain(found[1])
            found = self._entries(directory).get(part.upper())
        return found

    def exists(self, path: str) -> bool:
        """FAT names are case-insensitive, as firmware treats them."""
        return self._find(path) is not None

    def read(self, path: str) -> bytes | None:
        found = self._find(path)
        if found is None or found[0] & FAT_DIRECTORY:
            return None
        return self._chain(found[1], found[2])
