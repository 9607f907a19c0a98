"""The initrd's file list: cpio archives (newc, crc, odc), concatenated, each plain or
compressed (gzip, xz, zstd, lz4 legacy, bzip2), read in Python."""

from __future__ import annotations

import bz2
import lzma
import zlib

import zstandard

from ..host import runner

class InitrdError(Exception):
    """The initrd cannot be unpacked: unknown format or a corrupt compressed stream."""


CPIO_NEWC = (b"070701", b"070702")  # newc and its crc variant: 13 hex fields after the magic
CPIO_ODC = b"070707"  # POSIX portable: octal fields
CPIO_TRAILER = "TRAILER!!!"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _lz4(data: bytes) -> bytes:
    """No lz4 in Python's library; the kernel's legacy lz4 format is rare enough to call the tool."""
    unpacked = runner.run(["lz4", "-dc"], input=data)
    if unpacked.returncode != 0 and not unpacked.stdout:
        raise InitrdError(f"lz4: {runner.last_line(unpacked)}")
    return unpacked.stdout


DECOMPRESSORS = (
    (ZSTD_MAGIC, "zstd", _zstd),
    (b"\xfd7zXZ\x00", "xz", lambda data: lzma.LZMADecompressor().decompress(data)),
    (b"\x1f\x8b", "gzip", lambda data: zlib.decompressobj(wbits=31).decompress(data)),
    (LZ4_LEGACY_MAGIC, "lz4", _lz4),
    (b"BZh", "bzip2", lambda data: bz2.BZ2Decompressor().decompress(data)),
)


def initrd_members(data: bytes) -> list[str]:
    """Paths in an initrd: uncompressed cpio archives (early microcode) then one compressed one.

    The kernel unpacks the concatenation; this walks it the same way, reading the cpio headers
    and skipping over each member's data.
    """
    members: list[str] = []
    position = 0
    while position < len(data):
        if data.startswith(b"07070", position):
            names, position = _cpio_walk(data, position)
            members += names
            while position < len(data) and data[position] == 0:  # padding between archives
                position += 1
            continue
        found = next(((name, unpack) for magic, name, unpack in DECOMPRESSORS if data.startswith(magic, position)), None)
        if found is None:
            raise InitrdError(f"unknown data at byte {position} (not cpio, zstd, xz, gzip, lz4, bzip2)")
        name, unpack = found
        try:
            archive = unpack(data[position:])
        except (zlib.error, lzma.LZMAError, OSError, ValueError, EOFError, zstandard.ZstdError) as error:
            raise InitrdError(f"{name}: {error}")
        if not archive.startswith(b"07070"):
            raise InitrdError(f"the {name} stream at byte {position} does not hold a cpio archive")
        return members + _cpio_walk(archive, 0)[0]
    return members


def _cpio_walk(archive: bytes, position: int) -> tuple[list[str], int]:
    """Member paths of the cpio archive at ``position`` and where it ends (after its trailer)."""
    start = position
    names: list[str] = []
    while True:
        magic = archive[position:position + 6]
        if magic in CPIO_NEWC:
            header = archive[position:position + 110]
            try:
                fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
            except ValueError:
                raise InitrdError(f"cpio archive at byte {start}: damaged header at byte {position}")
            size, name_size = fields[6], fields[11]
            name_at = position + 110
            data_at = name_at + name_size + (-(110 + name_size) % 4)
            end = data_at + size + (-size % 4)
        elif magic == CPIO_ODC:
            header = archive[position:position + 76]
            try:
                name_size, size = int(header[59:65], 8), int(header[65:76], 8)
            except ValueError:
                raise InitrdError(f"cpio archive at byte {start}: damaged header at byte {position}")
            name_at = position + 76
            end = name_at + name_size + size
        else:
            raise InitrdError(f"cpio archive at byte {start} has no trailer (no header at byte {position})")
        if end > len(archive) or name_size == 0:
            raise InitrdError(f"cpio archive at byte {start} is truncated at byte {position}")
        name = archive[name_at:name_at + name_size - 1].decode(errors="replace")
        if name == CPIO_TRAILER:
            return names, end
        names.append(name.removeprefix("./"))
        position = end
