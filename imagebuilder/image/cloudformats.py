"""The disk inside a cloud's upload format, and the facts of that format, read in Python without
root, mount or network.

- Google Cloud imports a gzipped tar holding the raw disk as ``disk.raw`` (KIWI's ``gce`` format:
  ``tar --format=gnu -cSz``, a GNU sparse member, and a ``manifest.json`` when it was given a
  licence tag).  ``unpack_gce_tar`` reads the stream once: it lists every member and writes
  ``disk.raw`` to a sparse file, holes kept as holes.
- Azure takes a fixed VHD: the raw disk followed by a 512-byte footer (Microsoft's "Virtual Hard
  Disk Image Format Specification": cookie ``conectix``, big-endian fields, disk type 2 = fixed,
  a one's-complement checksum).  ``read_vhd_footer`` reads it; the disk is the bytes before it.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
import struct

from ..core.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
GCE_DISK = "disk.raw"
COPY_CHUNK = 2**20
ZERO_CHUNK = bytes(COPY_CHUNK)
# The magic of a member's header (POSIX ustar, GNU tar); a PAX member is ustar with extended
# headers before it.
TAR_MAGICS = {b"ustar\x0000": "ustar", b"ustar  \x00": "gnu"}
TAR_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.GNUTYPE_SPARSE: "GNU sparse file",
             tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link",
             tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo",
             tarfile.CONTTYPE: "contiguous file"}


@dataclass(frozen=True)
class TarMember:
    name: str
    kind: str  # TAR_TYPES: "file", "GNU sparse file", "directory", ...
    format: str  # its header's: "gnu", "pax", "ustar" or "v7"
    size: int  # bytes it holds once unpacked (a sparse member's holes included)

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, {self.format} header, {self.size} bytes)"


@dataclass(frozen=True)
class GceTar:
    """A gzipped tar's members, in order, and which of them was read as the disk."""

    members: tuple[TarMember, ...]
    disk: TarMember


class _Header(tarfile.TarInfo):
    """A member that remembers its header's magic, which tarfile reads past (the ``tarinfo``
    class is tarfile's documented extension point)."""

    magic = b""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        member = super().frombuf(buf, encoding, errors)
        member.magic = buf[257:265]
        return member


def _member(info: tarfile.TarInfo) -> TarMember:
    kind = TAR_TYPES.get(info.type, f"type {info.type!r}")
    tar_format = "pax" if info.pax_headers else TAR_MAGICS.get(getattr(info, "magic", b""), "v7")
    return TarMember(info.name, kind, tar_format, info.size)


def unpack_gce_tar(image: Path, raw: Path) -> GceTar:
    """Every member of the gzipped tar ``image``, and its disk written to ``raw`` (sparse).

    The disk is the member named disk.raw, else the only regular file that is not KIWI's
    manifest.json (so that a misnamed disk is still read, and its name judged by validate).
    """
    members: list[TarMember] = []
    disk, written = None, False
    try:
        with tarfile.open(image, mode="r:gz", tarinfo=_Header) as archive:
            for info in archive:
                members.append(_member(info))
                if info.isreg() and info.name == GCE_DISK and not written:
                    _write_sparse(archive, info, raw)
                    disk, written = members[-1], True
                elif info.isreg() and info.name != "manifest.json" and disk is None:
                    _write_sparse(archive, info, raw)  # replaced if a disk.raw follows
                    disk = members[-1]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise InputError(f"{image}: not a readable gzipped tar ({error})", "the file is truncated or corrupt")
    if disk is None:
        raise InputError(f"{image}: a gzipped tar without a disk (members: "
                         f"{', '.join(member.name for member in members) or 'none'})",
                         f"Google Cloud imports a tar holding the raw disk as {GCE_DISK}")
    return GceTar(tuple(members), disk)


def _write_sparse(archive: tarfile.TarFile, info: tarfile.TarInfo, raw: Path) -> None:
    """The member's bytes at their offsets in ``raw``; a sparse member's holes, and runs of
    zeros, are not written (a 10 GiB disk.raw of 1 GiB data takes 1 GiB)."""
    data = archive.extractfile(info)
    assert data is not None  # a regular member
    # tarfile's map of a sparse member: (offset, length) of each data region, in order
    sparse: list[tuple[int, int]] | None = getattr(info, "sparse", None)
    regions = sparse if sparse is not None else [(0, info.size)]
    with raw.open("wb") as out:
        for offset, length in regions:
            data.seek(offset)
            done = 0
            while done < length:
                chunk = data.read(min(COPY_CHUNK, length - done))
                if not chunk:
                    raise EOFError(f"{info.name} ends {length - done} bytes early")
                if chunk != ZERO_CHUNK[:len(chunk)]:
                    out.seek(offset + done)
                    out.write(chunk)
                done += len(chunk)
        out.truncate(info.size)


VHD_COOKIE = b"conectix"
VHD_FOOTER_SIZE = 512
# cookie, features, file format version, data offset, timestamp, creator application, creator
# version, creator host OS, original size, current size, geometry (cylinders, heads, sectors per
# track), disk type, checksum, unique id, saved state (the specification's footer, big-endian)
VHD_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")
VHD_CHECKSUM_AT = 64
VHD_DISK_TYPES = {0: "none", 2: "fixed", 3: "dynamic", 4: "differencing"}
VHD_FIXED = 2


@dataclass(frozen=True)
class VhdFooter:
    """The footer of a VHD and the file it ends."""

    creator: str  # the creator application: "qem2" for qemu-img with force_size, "win " ...
    version: int
    current_size: int  # the virtual disk's size in bytes
    original_size: int
    disk_type: int
    checksum: int
    computed_checksum: int  # one's complement of the sum of the footer's other bytes
    file_size: int

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == self.computed_checksum

    @property
    def type_name(self) -> str:
        return VHD_DISK_TYPES.get(self.disk_type, f"unknown ({self.disk_type})")


def vhd_checksum(footer: bytes) -> int:
    summed = sum(footer[:VHD_CHECKSUM_AT]) + sum(footer[VHD_CHECKSUM_AT + 4:VHD_FOOTER_SIZE])
    return ~summed & 0xFFFFFFFF


def read_vhd_footer(image: Path) -> VhdFooter | None:
    """The footer at the end of ``image``, or None when it has none (its cookie is absent)."""
    size = image.stat().st_size
    if size < VHD_FOOTER_SIZE:
        return None
    with image.open("rb") as file:
        file.seek(size - VHD_FOOTER_SIZE)
        footer = file.read(VHD_FOOTER_SIZE)
    if not footer.startswith(VHD_COOKIE):
        return None
    (_, _, version, _, _, creator, _, _, original_size, current_size, _, _, _, disk_type, checksum,
     *_) = VHD_FOOTER.unpack_from(footer)
    return VhdFooter(creator.decode("ascii", "replace"), version, current_size, original_size,
                     disk_type, checksum, vhd_checksum(footer), size)
