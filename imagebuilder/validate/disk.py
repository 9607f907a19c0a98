"""The disk image as raw bytes, and its GPT partition table (checked with both CRC32s)."""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .tools import message, run

SECTOR = 512
GPT_SIGNATURE = b"EFI PART"
# signature, revision, header size, header CRC, reserved, current/backup/first/last LBA, disk GUID,
# entries LBA, entry count, entry size, entries CRC (UEFI spec 5.3.2)
GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
BIOS_BOOT_TYPE = uuid.UUID("21686148-6449-6e6f-744e-656564454649")
LINUX_ROOT_TYPES = {
    uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4"): "Linux filesystem",
    uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"): "Linux root (x86-64)",
}


def raw_disk(image: Path, workdir: Path) -> Path:
    """A raw view of ``image``: the file itself if raw, else a sparse raw copy in ``workdir``.

    qemu-img reads qcow2 (compressed clusters, backing chains) without root or nbd; converting the
    whole disk costs about as much as the data it holds, since the unallocated part stays sparse.
    """
    if not image.is_file():
        raise InputError(f"{image}: no such image file")
    if image.stat().st_size == 0:
        raise InputError(f"{image}: empty file, not a disk image")
    info = run(["qemu-img", "info", "--output=json", str(image)])
    if info.returncode != 0:
        raise InputError(f"{image}: qemu-img cannot read it: {message(info)}")
    details = json.loads(info.stdout)
    if details["format"] == "raw":
        return image
    if details["format"] != "qcow2":
        raise InputError(f"{image}: {details['format']} images are not supported", "give a qcow2 or raw image")
    _check_qcow2(image, details["cluster-size"])
    raw = workdir / "disk.raw"
    # -W lets qemu-img's parallel coroutines write out of order: decompressing a KIWI qcow2
    # (zlib clusters) takes about 1.5 s instead of 2.5 s here.
    converted = run(["qemu-img", "convert", "-W", "-f", "qcow2", "-O", "raw", str(image), str(raw)])
    if converted.returncode != 0:
        raise InputError(f"{image}: qemu-img cannot read it: {message(converted)}")
    return raw


def _check_qcow2(image: Path, cluster_size: int) -> None:
    """A truncated or damaged qcow2 converts "successfully", with zeros where clusters are lost.

    qemu-img check reports corruptions (exit 2) and where the image should end; a file shorter
    than that by a cluster or more lost its tail (the last compressed cluster may be partial).
    """
    checked = run(["qemu-img", "check", "-f", "qcow2", "--output=json", str(image)])
    if checked.returncode == 1:  # the check could not run: unreadable header, missing backing file
        raise InputError(f"{image}: qemu-img cannot read it: {message(checked)}")
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


def read_gpt(raw: Path) -> Gpt:
    disk_size = raw.stat().st_size
    last_lba = disk_size // SECTOR - 1
    with raw.open("rb") as disk:
        primary = _read_header(disk, 1, "primary", last_lba)
        backup = _read_header(disk, last_lba, "backup", last_lba)
    if not primary.problems and not backup.problems and primary.partitions != backup.partitions:
        backup.problems.append("backup partition entries differ from the primary ones")
    return Gpt(primary, backup)


def _read_header(disk, lba: int, where: str, last_lba: int) -> GptHeader:
    header = GptHeader(where)
    if lba < 1:
        header.problems.append(f"{where} GPT header: disk too small")
        return header
    disk.seek(lba * SECTOR)
    sector = disk.read(SECTOR)
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
    disk.seek(entries_lba * SECTOR)
    entries = disk.read(entry_count * entry_size)
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
        header.partitions.append(Partition(number, type_guid, name, first, last))
    return header
