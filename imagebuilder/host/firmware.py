"""What a UEFI firmware image is made of: its firmware volumes and the driver files in them.

A TD's measurements depend on the firmware's drivers, not on a flag: TdxDxe lets OVMF run in a
TD, but only TdTcg2Dxe (edk2 ``OvmfPkg/Tcg/TdTcg2Dxe``) produces EFI_CC_MEASUREMENT_PROTOCOL,
keeps the CC event log (ACPI CCEL) and extends RTMR0-2. Without it nothing records the boot in
an RTMR (no PE image, no GPT, no loader event): a quote then attests only MRTD.

The reader walks the structures of the UEFI Platform Initialization spec, vol. 3: firmware
volume headers (``_FVH``), FFS file headers, and the sections inside a file; LZMA-compressed
GUID-defined sections (edk2's LzmaCustomDecompress, "lzma alone" format) and nested volume
images are opened, so the DXE volume inside OVMF's compressed FVMAIN_COMPACT is read too.
"""

from __future__ import annotations

import lzma
import struct
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

# FILE_GUID of the drivers whose presence decides what a boot records (their .inf files).
TDTCG2DXE = uuid.UUID("f062221e-c607-44c2-b0b4-c3886331d351")  # OvmfPkg/Tcg/TdTcg2Dxe/TdTcg2Dxe.inf
TDXDXE = uuid.UUID("e750224e-7bce-40af-b5bb-47e3611eb5c2")  # OvmfPkg/TdxDxe/TdxDxe.inf
TCG2DXE = uuid.UUID("fdff263d-5f68-4591-87ba-b768f445a9af")  # SecurityPkg/Tcg/Tcg2Dxe/Tcg2Dxe.inf
DRIVER_NAMES = {TDTCG2DXE: "TdTcg2Dxe", TDXDXE: "TdxDxe", TCG2DXE: "Tcg2Dxe"}

# PI spec vol. 3: EFI_FIRMWARE_VOLUME_HEADER up to HeaderLength/ExtHeaderOffset.
FV_HEADER = struct.Struct("<16s16sQ4sIHHHBB")
FV_SIGNATURE = b"_FVH"
FFS2 = uuid.UUID("8c8ce578-8a3d-4f1c-9935-896185c32dd3")
FFS3 = uuid.UUID("5473c07a-3dcb-4dca-bd6f-1e9689e7349a")
FV_ALIGNMENT = 0x1000  # where an FD places its volumes (edk2 FDF regions are block aligned)
FFS_HEADER = struct.Struct("<16sHBB3sB")
FFS_ATTRIB_LARGE_FILE = 0x01
FFS_TYPE_FREE_SPACE = 0xF0
SECTION_HEADER = struct.Struct("<3sB")
SECTION_COMPRESSION, SECTION_GUID_DEFINED, SECTION_FV_IMAGE = 0x01, 0x02, 0x17
LZMA_SECTION = uuid.UUID("ee4e5898-3914-4259-9d6e-dc7bd79403cf")
MAX_NESTING = 4


class FirmwareError(Exception):
    """The file is no UEFI firmware image with readable firmware volumes."""


def _size24(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def _volume_at(data: bytes, offset: int) -> tuple[int, int] | None:
    """(length, header length) of a valid volume header at ``offset``: signature, a length that
    fits, and a header whose 16-bit words sum to zero (the PI spec's checksum)."""
    if offset + FV_HEADER.size > len(data) or data[offset + 40 : offset + 44] != FV_SIGNATURE:
        return None
    _, _, length, _, _, header_length, _, _, _, _ = FV_HEADER.unpack_from(data, offset)
    if header_length < FV_HEADER.size or header_length % 2 or not 0 < length <= len(data) - offset:
        return None
    words = struct.unpack_from(f"<{header_length // 2}H", data, offset)
    if sum(words) & 0xFFFF:
        return None
    return length, header_length


def volumes(data: bytes) -> list[bytes]:
    """The top-level volumes of a flash image, found on block boundaries."""
    found, offset = [], 0
    while offset < len(data):
        volume = _volume_at(data, offset)
        if volume is None:
            offset += FV_ALIGNMENT
            continue
        found.append(data[offset : offset + volume[0]])
        offset += _align(volume[0], FV_ALIGNMENT)
    return found


def _files(volume: bytes):
    """(file name, file type, section bytes) of each FFS file in a FFS2/FFS3 volume."""
    _, filesystem, length, _, _, header_length, _, ext_offset, _, _ = FV_HEADER.unpack_from(volume)
    if uuid.UUID(bytes_le=filesystem) not in (FFS2, FFS3):
        return  # the variable store and other non-file volumes hold no drivers
    position = header_length
    if ext_offset:
        (ext_size,) = struct.unpack_from("<I", volume, ext_offset + 16)
        position = ext_offset + ext_size
    position = _align(position, 8)
    while position + FFS_HEADER.size <= length:
        name, _, file_type, attributes, size, _ = FFS_HEADER.unpack_from(volume, position)
        if name == b"\xff" * 16:
            break  # erased flash: the rest of the volume is free
        header = FFS_HEADER.size
        if attributes & FFS_ATTRIB_LARGE_FILE:
            (file_size,) = struct.unpack_from("<Q", volume, position + header)
            header += 8
        else:
            file_size = _size24(size)
        if file_size < header or position + file_size > length:
            raise FirmwareError(f"FFS file at {position:#x} of a volume has a bad size")
        if file_type != FFS_TYPE_FREE_SPACE:
            yield uuid.UUID(bytes_le=name), file_type, volume[position + header : position + file_size]
        position = _align(position + file_size, 8)


def _sections(data: bytes):
    """(section type, header length, section bytes) of a file's section stream."""
    position = 0
    while position + SECTION_HEADER.size <= len(data):
        size, section_type = SECTION_HEADER.unpack_from(data, position)
        length, header = _size24(size), SECTION_HEADER.size
        if length == 0xFFFFFF:
            (length,) = struct.unpack_from("<I", data, position + header)
            header += 4
        if length < header or position + length > len(data):
            break
        yield section_type, header, data[position : position + length]
        position = _align(position + length, 4)


def _nested_volumes(sections: bytes, depth: int):
    """Volumes inside a file's sections: FV images, also behind LZMA GUID-defined sections."""
    for section_type, header, section in _sections(sections):
        if section_type == SECTION_FV_IMAGE:
            yield section[header:]
        elif section_type == SECTION_GUID_DEFINED and depth < MAX_NESTING:
            guid, data_offset, _ = struct.unpack_from("<16sHH", section, header)
            body = section[data_offset:]
            if uuid.UUID(bytes_le=guid) == LZMA_SECTION:
                try:
                    body = lzma.decompress(body, format=lzma.FORMAT_ALONE)
                except lzma.LZMAError as error:
                    raise FirmwareError(f"an LZMA section does not decompress: {error}") from None
            yield from _nested_volumes(body, depth + 1)


@dataclass(frozen=True)
class FirmwareImage:
    path: Path
    data: bytes

    @classmethod
    def read(cls, path: Path) -> FirmwareImage:
        try:
            return cls(path, path.read_bytes())
        except OSError as error:
            raise FirmwareError(f"{path}: {error.strerror}") from None

    @cached_property
    def files(self) -> frozenset[uuid.UUID]:
        """The names of every FFS file in every volume, nested volumes included."""
        pending = [(volume, 0) for volume in volumes(self.data)]
        if not pending:
            raise FirmwareError(f"{self.path} has no firmware volume: not a UEFI firmware image")
        names: set[uuid.UUID] = set()
        while pending:
            volume, depth = pending.pop()
            for name, _, sections in _files(volume):
                names.add(name)
                if depth < MAX_NESTING:
                    pending.extend((nested, depth + 1) for nested in _nested_volumes(sections, 0))
        return frozenset(names)

    def has(self, driver: uuid.UUID) -> bool:
        return driver in self.files

    @property
    def records_rtmr_events(self) -> bool:
        """TdTcg2Dxe is there: the firmware measures the boot into RTMRs and keeps the CCEL."""
        return self.has(TDTCG2DXE)

    def drivers(self) -> list[str]:
        """The measurement-relevant drivers present, by name."""
        return [name for guid, name in DRIVER_NAMES.items() if guid in self.files]

