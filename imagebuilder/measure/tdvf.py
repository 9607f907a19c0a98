"""MRTD and the firmware's own RTMR0 events, from a TDVF (OVMF built for TDX) image.

TDVF describes how the VMM loads it in its metadata (Intel "TDX Virtual Firmware Design
Guide" 11; edk2 ``OvmfPkg/ResetVector``): the GUID table that ends 32 bytes before the end of
the image holds, under TDX_METADATA_OFFSET_GUID, the distance from the end to the ``TDVF``
descriptor, which lists sections (boot firmware volume, configuration volume, TD HOB,
temporary memory ...) with where they load and two attributes: MR.EXTEND (their bytes are
measured) and PAGE.AUG (added after boot, not measured).

MRTD is the SHA-384 over the TDX module's records of building the TD: for every page not
marked PAGE.AUG a 128-byte ``MEM.PAGE.ADD`` record with its guest-physical address, and for
every page marked MR.EXTEND sixteen ``MR.EXTEND`` records each followed by 256 bytes of the
page. QEMU's order decides the value: QEMU 9.0 and later (upstream TDX support included) add
and extend page by page ("single pass"); the TDX QEMU 8.x trees added all pages of a section
before extending them ("two pass"). Source of both orders and of the version rule:
Dstack-TEE/dstack ``dstack-mr/src/tdvf.rs`` and ``machine.rs``; virtee/tdx-measure computes the
single pass. No TDVF image with a published MRTD was at hand here: the values are unverified.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from . import eventlog as ev

TABLE_FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
TDX_METADATA_OFFSET_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
BYTES_AFTER_TABLE_FOOTER = 32
TABLE_ENTRY_TAIL = 18  # each entry ends with its u16 length (which counts these 18) and GUID
DESCRIPTOR = struct.Struct("<4sIII")  # "TDVF", length, version, number of sections
SECTION = struct.Struct("<IIQQII")  # data offset, raw size, GPA, memory size, type, attributes
PAGE = 0x1000
EXTEND_CHUNK = 0x100
ATTRIBUTE_MR_EXTEND, ATTRIBUTE_PAGE_AUG = 0x1, 0x2
SECTION_TYPES = {0: "BFV", 1: "CFV", 2: "TD_HOB", 3: "TEMP_MEM", 4: "PERM_MEM", 5: "PAYLOAD",
                 6: "PAYLOAD_PARAM"}
SINGLE_PASS, TWO_PASS = "single-pass", "two-pass"
ORDER_RULE = {SINGLE_PASS: "QEMU 9.0 and later (upstream TDX support is in 10.1)",
              TWO_PASS: "the TDX QEMU 8.x trees"}
# EFI_GLOBAL_VARIABLE and EFI_IMAGE_SECURITY_DATABASE_GUID (UEFI 2.10 3.3, 32.6.1).
GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
SECURE_BOOT_VARIABLES = ((GLOBAL_VARIABLE, "SecureBoot"), (GLOBAL_VARIABLE, "PK"),
                         (GLOBAL_VARIABLE, "KEK"), (SECURITY_DATABASE, "db"),
                         (SECURITY_DATABASE, "dbx"))
UNVERIFIED = "unverified: no TDX host, and no public TDVF image with its measured values, here"


class TdvfError(Exception):
    """The file is not a TDVF image (or its metadata is inconsistent)."""


@dataclass(frozen=True)
class Section:
    data_offset: int
    raw_size: int
    address: int
    memory_size: int
    kind: int
    attributes: int

    @property
    def name(self) -> str:
        return SECTION_TYPES.get(self.kind, f"type {self.kind}")

    def to_dict(self) -> dict:
        return {"type": self.name, "address": f"0x{self.address:x}",
                "memory_size": self.memory_size, "raw_size": self.raw_size,
                "mr_extend": bool(self.attributes & ATTRIBUTE_MR_EXTEND),
                "page_aug": bool(self.attributes & ATTRIBUTE_PAGE_AUG)}


def guid_table(firmware: bytes) -> dict[bytes, bytes]:
    """GUID -> data of the entries of the GUID table before the image's last 32 bytes."""
    footer = len(firmware) - BYTES_AFTER_TABLE_FOOTER
    if footer < TABLE_ENTRY_TAIL or firmware[footer - 16 : footer] != TABLE_FOOTER_GUID:
        raise TdvfError("no OVMF GUID table at the end: not an OVMF/TDVF firmware image")
    (length,) = struct.unpack_from("<H", firmware, footer - TABLE_ENTRY_TAIL)
    start = footer - length
    if length < TABLE_ENTRY_TAIL or start < 0:
        raise TdvfError(f"GUID table length {length} does not fit the image")
    entries, end = {}, footer - TABLE_ENTRY_TAIL
    while end - start >= TABLE_ENTRY_TAIL:
        guid = firmware[end - 16 : end]
        (size,) = struct.unpack_from("<H", firmware, end - TABLE_ENTRY_TAIL)
        if size < TABLE_ENTRY_TAIL or end - size < start:
            raise TdvfError(f"GUID table entry {uuid.UUID(bytes_le=guid)} has a bad length {size}")
        entries[guid] = firmware[end - size : end - TABLE_ENTRY_TAIL]
        end -= size
    return entries


def sections(firmware: bytes) -> list[Section]:
    entry = guid_table(firmware).get(TDX_METADATA_OFFSET_GUID)
    if entry is None or len(entry) < 4:
        raise TdvfError("no TDX metadata in the firmware's GUID table: an OVMF built without "
                        "TDX support (not TDVF)")
    (distance,) = struct.unpack_from("<I", entry, len(entry) - 4)
    offset = len(firmware) - distance
    if not 0 <= offset <= len(firmware) - DESCRIPTOR.size:
        raise TdvfError(f"TDX metadata offset {distance} points outside the image")
    signature, _, version, count = DESCRIPTOR.unpack_from(firmware, offset)
    if signature != b"TDVF" or version != 1:
        raise TdvfError("no TDVF descriptor (version 1) where the metadata offset points")
    found = []
    for index in range(count):
        at = offset + DESCRIPTOR.size + SECTION.size * index
        if at + SECTION.size > len(firmware):
            raise TdvfError(f"TDVF section {index} lies past the end of the image")
        section = Section(*SECTION.unpack_from(firmware, at))
        if section.address % PAGE or section.memory_size % PAGE:
            raise TdvfError(f"TDVF section {index} ({section.name}) is not page aligned")
        if section.raw_size > section.memory_size or \
                section.data_offset + section.raw_size > len(firmware):
            raise TdvfError(f"TDVF section {index} ({section.name}) lies outside the file: a "
                            "code-only half (OVMF_CODE*.fd)? A TD loads the whole TDVF image "
                            "(OVMF.fd) with -bios")
        found.append(section)
    return found


def page_add(address: int) -> bytes:
    return b"MEM.PAGE.ADD".ljust(16, b"\0") + struct.pack("<Q", address) + bytes(104)


def mr_extend(address: int) -> bytes:
    return b"MR.EXTEND".ljust(16, b"\0") + struct.pack("<Q", address) + bytes(104)


def mrtd(firmware: bytes, order: str = SINGLE_PASS) -> bytes:
    digest = hashlib.sha384()
    for section in sections(firmware):
        pages = range(section.address, section.address + section.memory_size, PAGE)

        def add(page: int, section: Section = section) -> None:
            if not section.attributes & ATTRIBUTE_PAGE_AUG:
                digest.update(page_add(page))

        def extend(page: int, section: Section = section) -> None:
            if section.attributes & ATTRIBUTE_MR_EXTEND:
                for chunk in range(page, page + PAGE, EXTEND_CHUNK):
                    start = section.data_offset + chunk - section.address
                    digest.update(mr_extend(chunk))
                    digest.update(firmware[start : start + EXTEND_CHUNK].ljust(EXTEND_CHUNK, b"\0"))

        if order == TWO_PASS:
            for page in pages:
                add(page)
            for page in pages:
                extend(page)
        else:
            for page in pages:
                add(page)
                extend(page)
    return digest.digest()


def uefi_variable_data(vendor: uuid.UUID, name: str, data: bytes = b"") -> bytes:
    """UEFI_VARIABLE_DATA (TCG PC Client PFP 10.2.6): what TDVF hashes for a variable event."""
    encoded = name.encode("utf-16-le")
    return vendor.bytes_le + struct.pack("<QQ", len(name), len(data)) + encoded + data


@dataclass(frozen=True)
class FirmwareEvent:
    """One RTMR0 event the firmware records before the boot loader runs."""

    description: str
    digest: bytes | None  # None: cannot be known from the firmware image
    source: str  # who decides it, or why it is unknown

    def to_dict(self) -> dict:
        return {"description": self.description,
                "sha384": self.digest.hex() if self.digest else None, "source": self.source}


def rtmr0_events(firmware: bytes) -> list[FirmwareEvent]:
    """TDVF's RTMR0 events in log order (edk2 OvmfPkg TdTcg2Dxe / TdxHelperLib; the order of
    go-tdx-guest's public CCEL), computed where the firmware alone decides them."""
    cfv = next((s for s in sections(firmware) if s.name == "CFV"), None)
    events = [FirmwareEvent("TD HOB (EV_EFI_HANDOFF_TABLES2 'TdxTable')", None,
                            "unknown: QEMU builds the TD HOB (hw/i386/tdvf-hob.c) from the "
                            "TDVF sections and the TD's memory size and layout")]
    if cfv is not None:
        data = firmware[cfv.data_offset : cfv.data_offset + cfv.raw_size]
        events.append(FirmwareEvent(f"configuration firmware volume, {cfv.raw_size} bytes "
                                    "(EV_PLATFORM_FIRMWARE_BLOB2)", ev.sha384(data),
                                    "the firmware image's CFV section"))
    for vendor, name in SECURE_BOOT_VARIABLES:
        events.append(FirmwareEvent(
            f"{name} (EV_EFI_VARIABLE_DRIVER_CONFIG)", ev.sha384(uefi_variable_data(vendor, name)),
            "assumes the variable is not set (no Secure Boot keys enrolled in the CFV's "
            "variable store)"))
    events.append(FirmwareEvent("separator (EV_SEPARATOR)", ev.sha384(b"\0" * 4),
                                "TcgPcrEvent separator, fixed"))
    for table in ("ACPI table loader", "RSDP", "ACPI tables"):
        events.append(FirmwareEvent(f"{table} (EV_PLATFORM_CONFIG_FLAGS 'ACPI DATA')", None,
                                    "unknown: QEMU generates the ACPI tables for the VM's "
                                    "devices, memory and CPUs"))
    events.append(FirmwareEvent("BootOrder and Boot#### (EV_EFI_VARIABLE_BOOT)", None,
                                "unknown: the boot options depend on the VM's devices and "
                                "QEMU's bootorder"))
    return events


def measure_firmware(firmware: bytes) -> dict:
    """What ``measure --firmware`` reports: the sections, MRTD in both QEMU orders with the QEMU
    versions each applies to, and the RTMR0 events."""
    return {
        "sections": [section.to_dict() for section in sections(firmware)],
        "mrtd": {order: {"value": mrtd(firmware, order).hex(), "qemu": ORDER_RULE[order]}
                 for order in (SINGLE_PASS, TWO_PASS)},
        "status": f"MRTD and the computed RTMR0 events are {UNVERIFIED}",
        "rtmr0_events": [event.to_dict() for event in rtmr0_events(firmware)],
        "rtmr0": None,
        "rtmr0_status": "unknown: its ACPI, TD HOB and boot option events come from QEMU and "
                        "the VM's shape; take RTMR0 from a reference TD of that shape",
    }
