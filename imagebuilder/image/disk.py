"""The disk image as bytes read in place (raw, or qcow2 cluster by cluster), and its GPT partition table
(checked with both CRC32s)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import tempfile
import uuid
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import zstandard

from ..host import runner
from ..core.errors import InputError
from ..core.inputs import PATH_MAX, require_regular_file
from .cloudformats import (GZIP_MAGIC, VHD_COOKIE, VHD_FOOTER_SIZE, GceTar, VhdFooter, read_vhd_footer,
                           unpack_gce_tar)

SECTOR = 512
GPT_SIGNATURE = b"EFI PART"
MBR_SIGNATURE = b"\x55\xaa"
# signature, revision, header size, header CRC, reserved, current/backup/first/last LBA, disk GUID,
# entries LBA, entry count, entry size, entries CRC (UEFI spec 5.3.2)
GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
BIOS_BOOT_TYPE = uuid.UUID("21686148-6449-6e6f-744e-656564454649")
LINUX_ROOT_TYPES = {
    uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4"): "Linux filesystem",
    uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"): "Linux root (x86-64)",
}


# image_format's names of the clouds' upload formats: Google Cloud's gzipped tar (qemu would
# call it raw) and a fixed VHD (qemu's vpc driver; its probe sees only a VHD's leading copy of
# the footer, which a fixed one does not have).
GCE_TAR = "gce-tar"
VHD = "vpc"


class Disk(Protocol):
    """Random access to the guest's disk bytes."""

    size: int
    # What the disk came packed in, for the checks of a cloud's format: the tar's members, the
    # VHD's footer; None for a qcow2, raw or vmdk image.
    packing: GceTar | VhdFooter | None

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class RawDisk:
    """A raw file's bytes; with ``size``, only its first ``size`` bytes (a fixed VHD's data)."""

    def __init__(self, path: Path, size: int | None = None, packing: GceTar | VhdFooter | None = None):
        self.file = path.open("rb")
        self.size = path.stat().st_size if size is None else size
        self.packing = packing

    def read(self, offset: int, length: int) -> bytes:
        """The bytes at ``offset``; a hole of a sparse file is answered with zeros without
        reading it (reading 4 GiB of holes fills the page cache with zeros: a GCE tar's disk.raw
        is unpacked sparse, and the verity check reads the whole root)."""
        if offset >= self.size or length <= 0:
            return b""
        end, fd = min(offset + length, self.size), self.file.fileno()
        pieces, position = [], offset
        while position < end:
            data = self._next_data(position, end)
            if data > position:
                pieces.append(bytes(data - position))
                position = data
                continue
            hole = min(os.lseek(fd, position, os.SEEK_HOLE), end)
            pieces.append(os.pread(fd, hole - position, position))
            position = hole
        return b"".join(pieces)

    def _next_data(self, position: int, end: int) -> int:
        try:
            return min(os.lseek(self.file.fileno(), position, os.SEEK_DATA), end)
        except OSError as error:  # ENXIO: only a hole after position (or no SEEK_DATA here)
            if error.errno == errno.ENXIO:
                return end
            raise

    def close(self) -> None:
        self.file.close()


QCOW2_MAGIC = b"QFI\xfb"
# magic, version, backing file offset/size, cluster bits, virtual size, crypt method, L1 size,
# L1 offset, refcount table offset/clusters, snapshots count/offset (qcow2 spec, header v2)
QCOW2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")
QCOW2_INCOMPATIBLE = {0: "dirty", 1: "corrupt", 2: "external data file", 3: "compression type",
                      4: "extended L2 entries"}
QCOW2_READABLE = {0, 3}  # dirty only means the refcounts may be stale; the mapping is intact
QCOW2_EXTERNAL_DATA = 1 << 2  # incompatible feature bit: clusters live in another file
VMDK_DESCRIPTOR = b"# Disk DescriptorFile"  # a text vmdk: the disk is in the files it names
MAX_BACKING_DEPTH = 8
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
COMPRESSED = 1 << 62
ZERO_CLUSTER = 1


class Qcow2Disk:
    """A qcow2 image read cluster by cluster, never unpacked as a whole.

    Follows the L1/L2 tables of the active image, inflates zlib or zstd compressed clusters one at
    a time (cached), reads unallocated clusters from the backing file (or as zeros).  Encrypted
    images and features a reader must understand but this one does not are refused.
    """

    packing: GceTar | VhdFooter | None = None

    def __init__(self, path: Path):
        self.path = path
        self.file = path.open("rb")
        header = self.file.read(112)
        (magic, version, backing_offset, backing_size, self.cluster_bits, self.size, crypt, l1_size,
         l1_offset, *_) = QCOW2_HEADER.unpack_from(header.ljust(QCOW2_HEADER.size, b"\0"))
        if magic != QCOW2_MAGIC or version not in (2, 3) or not 9 <= self.cluster_bits <= 21:
            raise InputError(f"{path}: not a qcow2 image qemu-img and this reader agree on")
        if crypt:
            raise InputError(f"{path}: encrypted qcow2 images cannot be inspected", "validate the unencrypted image")
        incompatible, compression, self.header_length = 0, 0, 72
        if version == 3:
            incompatible = struct.unpack_from(">Q", header, 72)[0]
            self.header_length = struct.unpack_from(">I", header, 100)[0]
            compression = header[104] if self.header_length > 104 else 0
        unknown = [QCOW2_INCOMPATIBLE.get(bit, f"bit {bit}") for bit in range(64)
                   if incompatible >> bit & 1 and bit not in QCOW2_READABLE]
        if unknown or compression not in (0, 1):
            raise InputError(f"{path}: qcow2 feature not supported by the validator: "
                             f"{', '.join(unknown) or f'compression type {compression}'}",
                             "qemu-img convert -O qcow2 it to a plain qcow2 first")
        self.zstd = compression == 1
        self.cluster_size = 1 << self.cluster_bits
        self.l1 = struct.unpack(f">{l1_size}Q", self._pread(l1_offset, 8 * l1_size))
        self.l2_entries = self.cluster_size // 8
        self.l2_tables: dict[int, tuple[int, ...]] = {}
        self.backing = _backing(path, self._pread(backing_offset, backing_size).decode(),
                                self._extension(0xE2792ACA)) if backing_offset else None
        self.cluster = lru_cache(maxsize=512)(self._cluster)

    def close(self) -> None:
        self.file.close()
        if self.backing:
            self.backing.close()

    def _pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.file.fileno(), length, offset)

    def _extension(self, wanted: int) -> bytes | None:
        """A header extension's data (qcow2 spec: type, length, data padded to 8 bytes)."""
        offset = self.header_length
        while True:
            kind, length = struct.unpack(">II", self._pread(offset, 8))
            if kind in (0, wanted):
                return self._pread(offset + 8, length) if kind else None
            offset += 8 + (length + 7) // 8 * 8

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        parts = []
        while length > 0:
            index, within = divmod(offset, self.cluster_size)
            take = min(length, self.cluster_size - within)
            parts.append(self.cluster(index)[within:within + take])
            offset, length = offset + take, length - take
        return b"".join(parts)

    def _cluster(self, index: int) -> bytes:
        l1_index, l2_index = divmod(index, self.l2_entries)
        l2_offset = self.l1[l1_index] & OFFSET_MASK if l1_index < len(self.l1) else 0
        entry = self._l2_table(l2_offset)[l2_index] if l2_offset else 0
        if entry & COMPRESSED:
            return self._compressed(entry)
        host = entry & OFFSET_MASK
        if host:
            data = self._pread(host, self.cluster_size)
            if len(data) < self.cluster_size:
                raise InputError(f"{self.path}: damaged qcow2 (cluster at {host} lies beyond the end of the file)",
                                 "the file is truncated or corrupt")
            return data
        if entry & ZERO_CLUSTER or self.backing is None:
            return bytes(self.cluster_size)
        return self.backing.read(index * self.cluster_size, self.cluster_size).ljust(self.cluster_size, b"\0")

    def _l2_table(self, offset: int) -> tuple[int, ...]:
        if offset not in self.l2_tables:
            self.l2_tables[offset] = struct.unpack(f">{self.l2_entries}Q", self._pread(offset, self.cluster_size))
        return self.l2_tables[offset]

    def _compressed(self, entry: int) -> bytes:
        """Compressed cluster descriptor: host offset, then the count of extra 512-byte sectors."""
        offset_bits = 62 - (self.cluster_bits - 8)
        host = entry & ((1 << offset_bits) - 1)
        sectors = (entry >> offset_bits & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        data = self._pread(host, sectors * 512 - (host & 511))
        try:
            if self.zstd:
                cluster = zstandard.ZstdDecompressor().decompressobj().decompress(data)
            else:
                cluster = zlib.decompressobj(-15).decompress(data, self.cluster_size)
        except (zlib.error, zstandard.ZstdError) as error:
            raise InputError(f"{self.path}: damaged qcow2 (compressed cluster at {host}: {error})",
                             "the file is truncated or corrupt")
        if len(cluster) != self.cluster_size:
            raise InputError(f"{self.path}: damaged qcow2 (compressed cluster at {host} inflates to "
                             f"{len(cluster)} bytes)", "the file is truncated or corrupt")
        return cluster


def _backing(path: Path, name: str, format_name: bytes | None) -> Disk:
    backing = (path.parent / name) if not name.startswith("/") else Path(name)
    with backing.open("rb") as file:
        magic = file.read(4)
    if (format_name or b"").decode() == "raw" or (format_name is None and magic != QCOW2_MAGIC):
        return RawDisk(backing)
    return Qcow2Disk(backing)


def open_disk(image: Path, allow_backing: bool = False) -> Disk:
    """The disk bytes of a raw, qcow2 or fixed VHD image, read in place; a vmdk converted and a
    GCE tar's disk.raw unpacked to a temporary sparse file, removed when the disk is closed.

    qemu-img (which everyone trusts to read qcow2) first tells the format and checks the metadata.
    """
    kind = image_format(image, allow_backing)
    disk: Disk
    if kind == GCE_TAR:
        disk = _unpacked_gce_tar(image)
    elif kind == VHD:
        footer = read_vhd_footer(image)
        disk = RawDisk(image, size=image.stat().st_size - VHD_FOOTER_SIZE, packing=footer)
    else:
        disk = _converted_vmdk(image) if kind == "vmdk" else RawDisk(image) if kind == "raw" \
            else Qcow2Disk(image)
    if not _has_partition_table(disk):  # a qcow2 of anything: as unreadable as such a raw file
        disk.close()
        raise InputError(f"{image}: not a disk image (no partition table in its {kind} contents)",
                         "give a qcow2, vmdk or raw disk image")
    return disk


def _has_partition_table(disk: Disk) -> bool:
    last = disk.size // SECTOR - 1
    return disk.read(510, 2) == MBR_SIGNATURE or GPT_SIGNATURE in (
        disk.read(SECTOR, 8), disk.read(last * SECTOR, 8))


def image_format(image: Path, allow_backing: bool = False) -> str:
    """"qcow2", "raw", "vmdk", GCE_TAR or VHD for a readable disk image; an InputError saying
    what else it is.

    A raw image must look like a partitioned disk (a whole number of sectors, an MBR or GPT
    signature): qemu-img calls any file raw, a text file included.  A qcow2 is checked whole.
    """
    require_regular_file(image, "image")
    if image.stat().st_size == 0:
        raise InputError(f"{image}: empty file, not a disk image")
    _refuse_other_files(image, allow_backing)
    packed = _cloud_format(image)
    if packed:
        return packed
    # Absolute: qemu reads "proto:..." and "json:{...}" names as instructions, not files.
    info = runner.run(["qemu-img", "info", "--output=json", str(image.absolute())])
    if info.returncode != 0:
        raise InputError(f"{image}: qemu-img cannot read it: {runner.last_line(info)}")
    details = json.loads(info.stdout)
    extents = details.get("format-specific", {}).get("data", {}).get("extents", [])
    if (details.get("backing-filename") and not allow_backing) or details.get(
            "format-specific", {}).get("data", {}).get("data-file") or any(
            extent.get("filename") != str(image.absolute()) for extent in extents):
        raise _names_other_files(image, "another file")  # what the header check did not see
    if details.get("encrypted"):
        raise InputError(f"{image}: encrypted qcow2 images cannot be inspected", "validate the unencrypted image")
    if details["format"] == "raw":
        if not _partitioned(image):
            raise InputError(f"{image}: not a disk image (no partition table)",
                             "give a qcow2 or raw disk image")
        return "raw"
    if details["format"] == "vmdk":  # what `build --format vmdk` makes
        # A truncated vmdk converts "successfully", with zeros: qemu-img check sees it.
        checked = runner.run(["qemu-img", "check", "-f", "vmdk", str(image.absolute())])
        if checked.returncode != 0:
            raise InputError(f"{image}: damaged vmdk: {runner.last_line(checked)}",
                             "the file is truncated or corrupt")
        return "vmdk"
    if details["format"] != "qcow2":
        raise InputError(f"{image}: {details['format']} images are not supported",
                         "give a qcow2, vmdk or raw image")
    _check_qcow2(image, details["cluster-size"])
    return "qcow2"


def _cloud_format(image: Path) -> str | None:
    """GCE_TAR or VHD by their magic (a gzip stream; a VHD footer at the end), else None."""
    head = _head(image)
    if head.startswith(GZIP_MAGIC):
        return GCE_TAR
    if head.startswith(VHD_COOKIE):  # a dynamic or differencing VHD starts with its footer's copy
        raise InputError(f"{image}: a dynamic VHD: its disk is in blocks this reader does not follow",
                         "Azure takes fixed VHDs: qemu-img convert -O vpc -o subformat=fixed,force_size")
    # A footer at the end alone: the layout of a fixed VHD, the disk's bytes before it (what its
    # footer says, the disk type included, is validate's to judge).
    return VHD if read_vhd_footer(image) is not None else None


def _unpacked_gce_tar(image: Path) -> Disk:
    """The tar's disk.raw unpacked to a sparse file in a temporary directory, read from there."""
    workdir = Path(tempfile.mkdtemp(prefix="tdx-image-gce-"))
    try:
        tar = unpack_gce_tar(image, workdir / "disk.raw")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return _TemporaryRawDisk(workdir / "disk.raw", workdir, tar)


def _refuse_other_files(image: Path, allow_backing: bool) -> None:
    """An image that names other files (a qcow2's backing file or external data file, a vmdk
    descriptor's extents) would hand host files (/etc/shadow) to the validator or a guest, or
    hang on a FIFO or a loop: refused before qemu-img opens anything.  A qcow2's backing chain
    only when the user allowed it (--allow-backing-file), and then only of regular files, without
    a loop, at most MAX_BACKING_DEPTH deep."""
    chain, current = [image], image
    while True:
        head = _head(current)
        if head.startswith(VMDK_DESCRIPTOR):
            raise _names_other_files(current, "its extent files (a vmdk descriptor)")
        if not head.startswith(QCOW2_MAGIC) or len(head) < QCOW2_HEADER.size:
            return
        version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
        if version == 3 and len(head) >= 80 and struct.unpack_from(">Q", head, 72)[0] & QCOW2_EXTERNAL_DATA:
            raise _names_other_files(current, "an external data file")
        if not backing_offset:
            return
        if backing_offset + backing_size > current.stat().st_size:
            raise InputError(f"{current}: damaged qcow2 (its backing file name lies beyond the "
                             "end of the file)", "the file is truncated or corrupt")
        with current.open("rb") as file:
            file.seek(backing_offset)
            name = file.read(min(backing_size, PATH_MAX)).decode("utf-8", "replace")
        if not allow_backing:
            raise _names_other_files(current, f"the backing file {name!r}")
        backing = current.parent / name
        require_regular_file(backing, f"the backing file of {current}")
        if any(os.path.samefile(backing, earlier) for earlier in chain):
            raise InputError(f"{current}: its backing file {name!r} leads back into its own chain",
                             "the image is damaged or crafted")
        if len(chain) > MAX_BACKING_DEPTH:
            raise InputError(f"{image}: backing files more than {MAX_BACKING_DEPTH} deep",
                             "qemu-img convert -O qcow2 it to one file first")
        chain.append(backing)
        current = backing


def _head(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(max(QCOW2_HEADER.size, 112))


def _names_other_files(image: Path, what: str) -> InputError:
    return InputError(f"{image} names {what}: its contents would be read from this host",
                      "if you trust that file, pass --allow-backing-file (qcow2 backing files), "
                      f"or make one file of it: qemu-img convert -O qcow2 {image} FLAT.qcow2")


def _partitioned(image: Path) -> bool:
    size = image.stat().st_size
    if size % SECTOR or size < 2 * SECTOR:
        return False
    with image.open("rb") as disk:
        head = disk.read(2 * SECTOR)
        disk.seek(size - SECTOR)
        tail = disk.read(SECTOR)
    return head[510:512] == MBR_SIGNATURE or GPT_SIGNATURE in (head[SECTOR:SECTOR + 8], tail[:8])


class _TemporaryRawDisk(RawDisk):
    """A raw copy made for reading; removed when closed."""

    def __init__(self, path: Path, workdir: Path, packing: GceTar | None = None):
        super().__init__(path, packing=packing)
        self.workdir = workdir

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _converted_vmdk(image: Path) -> Disk:
    """A (checked) vmdk converted to a sparse raw file in a temporary directory, read from there."""
    workdir = Path(tempfile.mkdtemp(prefix="tdx-image-vmdk-"))
    raw = workdir / "disk.raw"
    converted = runner.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(image.absolute()), str(raw)])
    if converted.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise InputError(f"{image}: qemu-img cannot read it: {runner.last_line(converted)}")
    return _TemporaryRawDisk(raw, workdir)


def _check_qcow2(image: Path, cluster_size: int) -> None:
    """A truncated or damaged qcow2 reads "successfully" in qemu, with zeros where clusters are lost.

    qemu-img check reports corruptions (exit 2) and where the image should end; a file shorter
    than that by a cluster or more lost its tail (the last compressed cluster may be partial).
    """
    checked = runner.run(["qemu-img", "check", "-f", "qcow2", "--output=json", str(image.absolute())])
    if checked.returncode == 1:  # the check could not run: unreadable header, missing backing file
        raise InputError(f"{image}: qemu-img cannot read it: {runner.last_line(checked)}")
    result = json.loads(checked.stdout)
    missing = result.get("image-end-offset", 0) - image.stat().st_size
    if result.get("corruptions") or missing >= cluster_size:
        raise InputError(f"{image}: damaged qcow2 ({result.get('corruptions', 0)} corruptions, "
                         f"{max(missing, 0)} bytes missing at the end)", "the file is truncated or corrupt")


@dataclass(frozen=True)
class Partition:
    number: int
    type_guid: uuid.UUID
    name: str
    first_lba: int
    last_lba: int
    unique_guid: uuid.UUID | None = None  # PARTUUID= on a kernel command line

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR

    def describe(self) -> str:
        return f"partition {self.number} ({self.name or 'unnamed'}, {self.size // 2**20} MiB)"


@dataclass
class GptHeader:
    """One copy of the GPT (primary at LBA 1, backup at the last LBA) and what is wrong with it."""

    where: str
    problems: list[str] = field(default_factory=list)
    partitions: list[Partition] = field(default_factory=list)


@dataclass
class Gpt:
    primary: GptHeader
    backup: GptHeader

    @property
    def valid(self) -> bool:
        return not self.primary.problems and not self.backup.problems

    @property
    def partitions(self) -> list[Partition]:
        """The partitions of an intact copy; firmware falls back to the backup the same way."""
        for header in (self.primary, self.backup):
            if not header.problems:
                return header.partitions
        return []


def read_gpt(disk: Disk) -> Gpt:
    last_lba = disk.size // SECTOR - 1
    primary = _read_header(disk, 1, "primary", last_lba)
    backup = _read_header(disk, last_lba, "backup", last_lba)
    if not primary.problems and not backup.problems and primary.partitions != backup.partitions:
        backup.problems.append("backup partition entries differ from the primary ones")
    return Gpt(primary, backup)


def _read_header(disk: Disk, lba: int, where: str, last_lba: int) -> GptHeader:
    header = GptHeader(where)
    if lba < 1:
        header.problems.append(f"{where} GPT header: disk too small")
        return header
    sector = disk.read(lba * SECTOR, SECTOR)
    if len(sector) < 92 or sector[:8] != GPT_SIGNATURE:
        header.problems.append(f"{where} GPT header at LBA {lba}: no 'EFI PART' signature")
        return header
    (_, _, header_size, header_crc, _, current_lba, _, _, _, _, entries_lba, entry_count,
     entry_size, entries_crc) = GPT_HEADER.unpack_from(sector)
    if not 92 <= header_size <= SECTOR:
        header.problems.append(f"{where} GPT header: implausible header size {header_size}")
        return header
    zeroed = sector[:16] + b"\0\0\0\0" + sector[20:header_size]
    if zlib.crc32(zeroed) != header_crc:
        header.problems.append(f"{where} GPT header at LBA {lba}: header CRC32 mismatch")
        return header
    if current_lba != lba:
        header.problems.append(f"{where} GPT header says it lives at LBA {current_lba}, found at {lba}")
    if entry_size < 128 or entry_count * entry_size > 2**20 or entries_lba > last_lba:
        header.problems.append(f"{where} GPT: implausible entry table ({entry_count} x {entry_size} at LBA {entries_lba})")
        return header
    entries = disk.read(entries_lba * SECTOR, entry_count * entry_size)
    if zlib.crc32(entries) != entries_crc:
        header.problems.append(f"{where} GPT partition entries: CRC32 mismatch")
        return header
    for number in range(1, entry_count + 1):
        entry = entries[(number - 1) * entry_size : number * entry_size]
        type_guid = uuid.UUID(bytes_le=entry[:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le", errors="replace").rstrip("\0")
        header.partitions.append(Partition(number, type_guid, name, first, last,
                                           uuid.UUID(bytes_le=entry[16:32])))
    return header
