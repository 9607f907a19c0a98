"""What the firmware and shim measure about EFI binaries and the disk.

- ``authenticode_sha384``: the PE/COFF image hash the firmware (and shim, for the next loader)
  extends into PCR 4 / RTMR1, computed by LIEF.
- ``gpt_event_data``: UEFI_GPT_DATA, the PCR 5 / RTMR1 event of edk2's TcgMeasureGptTable.
- ``Shim``: the MOK lists shim logs into PCR 14 / RTMR2 when the MOK variables are empty
  (rhboot/shim ``mok.c`` mirror_one_mok_variable).
- ``GrubImage``: what the signed grub carries: its embedded config and memdisk, prefix,
  built-in modules. Whether a loader measures into RTMRs is told from its version
  (components.py), not from bytes it happens to contain.
"""

from __future__ import annotations

import io
import struct
import uuid
from dataclasses import dataclass
from functools import cached_property

from ..host import signals

# UEFI 2.10 32.4.1 and shim's SHIM_LOCK_GUID (owner of the signatures shim puts in MokListRT).
EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072").bytes_le
EFI_CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328").bytes_le
SHIM_LOCK_GUID = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23").bytes_le
# shim's .vendor_cert section starts with struct cert_table (shim.c).
VENDOR_CERT_TABLE = struct.Struct("<IIII")
DER_SEQUENCE = b"\x30\x82"
# grub-mkimage's module area (include/grub/kernel.h): grub_module_info64 then module headers.
GRUB_MODULE_MAGIC = 0x676D696D  # "mimg"
GRUB_MODULE_INFO = struct.Struct("<IIQQ")
GRUB_MODULE_HEADER = struct.Struct("<II")
OBJ_TYPE_ELF, OBJ_TYPE_MEMDISK, OBJ_TYPE_CONFIG, OBJ_TYPE_PREFIX = 0, 1, 2, 3


class EfiError(Exception):
    """An EFI binary is not what the boot path needs (not PE, no shim certificate table...)."""


class PeImage:
    """A PE/COFF file parsed by LIEF, with COFF long section names resolved."""

    def __init__(self, data: bytes, name: str):
        # LIEF's import and its reads of the stream call back into Python: a signal raised in one
        # would cross LIEF's C++ frames and abort the process, so it waits until both are done.
        with signals.deferred():
            import lief  # here, not at the top: it takes half a second, every verb would pay

            self.data, self.name, self.lief = data, name, lief
            lief.logging.disable()
            binary = lief.PE.parse(io.BytesIO(data))
        if binary is None:
            raise EfiError(f"{name} is not a PE/COFF image")
        self.binary = binary

    @cached_property
    def authenticode_sha384(self) -> bytes:
        return bytes(self.binary.authentihash(self.lief.PE.ALGORITHMS.SHA_384))

    def section(self, wanted: str) -> bytes | None:
        """A section's bytes (its virtual size) by name; names longer than 8 characters live in
        the COFF string table as ``/offset``, which GNU ld writes for EFI binaries like shim."""
        header = self.binary.header
        strings = header.pointerto_symbol_table + header.numberof_symbols * 18
        for section in self.binary.sections:
            name = section.name
            if isinstance(name, bytes):  # LIEF's raw bytes for a name that is no valid UTF-8
                name = name.decode(errors="replace")
            if name.startswith("/") and name[1:].isdigit():
                start = strings + int(name[1:])
                name = self.data[start : self.data.find(b"\0", start)].decode(errors="replace")
            if name == wanted:
                return self.data[section.offset : section.offset + section.virtual_size]
        return None


def gpt_event_data(disk, sector: int = 512) -> bytes:
    """UEFI_GPT_DATA as edk2 measures it: the primary header, the number of used entries, and
    the used entries (non-zero type GUID) in table order.  ``disk``: validate.disk.Disk."""
    header_sector = disk.read(sector, sector)
    (header_size,) = struct.unpack_from("<I", header_sector, 12)
    entries_lba, count, entry_size = struct.unpack_from("<QII", header_sector, 72)
    table = disk.read(entries_lba * sector, count * entry_size)
    used = [table[i : i + entry_size] for i in range(0, len(table), entry_size)
            if table[i : i + 16] != bytes(16)]
    return header_sector[:header_size] + struct.pack("<Q", len(used)) + b"".join(used)


def signature_list(signature_type: bytes, payload: bytes) -> bytes:
    """EFI_SIGNATURE_LIST with one EFI_SIGNATURE_DATA owned by shim (fill_esl_with_one_signature)."""
    signature_size = 16 + len(payload)
    return (signature_type + struct.pack("<III", 28 + signature_size, 0, signature_size)
            + SHIM_LOCK_GUID + payload)


@dataclass(frozen=True)
class MokEvent:
    name: str  # the EV_IPL event data, without its NUL
    data: bytes  # what shim hashes


class Shim(PeImage):
    def mok_events(self) -> list[MokEvent]:
        """shim's PCR 14 events on a machine whose MOK variables are unset (a fresh VARS store):
        MokList = the built-in vendor certificate (or vendor db), MokListX = the built-in vendor
        dbx (or a placeholder list holding one zero SHA-256), MokListTrusted = 0x01 (absent
        variable, MOK_VARIABLE_INVERSE). MokSBState and MokPolicy are not logged when unset."""
        table = self.section(".vendor_cert")
        if table is None or len(table) < VENDOR_CERT_TABLE.size:
            raise EfiError(f"{self.name} has no .vendor_cert section: not a shim")
        auth_size, deauth_size, auth_offset, deauth_offset = VENDOR_CERT_TABLE.unpack_from(table)
        authorized = table[auth_offset : auth_offset + auth_size]
        deauthorized = table[deauth_offset : deauth_offset + deauth_size]
        if not authorized:
            raise EfiError(f"{self.name} carries no vendor certificate: MokList would be the "
                           "placeholder list, which is not modelled")
        moklist = (signature_list(EFI_CERT_X509_GUID, authorized)
                   if authorized.startswith(DER_SEQUENCE) else authorized)
        moklistx = deauthorized or signature_list(EFI_CERT_SHA256_GUID, bytes(32))
        return [MokEvent("MokList", moklist), MokEvent("MokListX", moklistx),
                MokEvent("MokListTrusted", b"\x01")]


class GrubImage(PeImage):
    """A grub-mkimage EFI image: its module area holds modules, the memdisk, config and prefix."""

    @cached_property
    def _objects(self) -> list[tuple[int, bytes]]:
        area = self.section("mods")
        if area is None:
            raise EfiError(f"{self.name} has no 'mods' section: not a grub EFI image")
        magic, _, offset, size = GRUB_MODULE_INFO.unpack_from(area)
        if magic != GRUB_MODULE_MAGIC:
            raise EfiError(f"{self.name}: grub module area without its 'mimg' magic")
        objects, position = [], offset
        while position + GRUB_MODULE_HEADER.size <= min(size, len(area)):
            kind, length = GRUB_MODULE_HEADER.unpack_from(area, position)
            if length < GRUB_MODULE_HEADER.size:
                break
            objects.append((kind, area[position + GRUB_MODULE_HEADER.size : position + length]))
            position += length
        return objects

    def _object(self, kind: int) -> bytes | None:
        return next((data for found, data in self._objects if found == kind), None)

    @property
    def embedded_config(self) -> str:
        config = self._object(OBJ_TYPE_CONFIG)
        return config.rstrip(b"\0").decode(errors="replace") if config else ""

    @property
    def prefix(self) -> str:
        prefix = self._object(OBJ_TYPE_PREFIX)
        return prefix.rstrip(b"\0").decode(errors="replace") if prefix else ""

    @property
    def memdisk(self) -> bytes | None:
        return self._object(OBJ_TYPE_MEMDISK)

    def has_module(self, name: str) -> bool:
        """Built in (insmod is then a no-op): the name is in a module's .modname section."""
        needle = b"\0" + name.encode() + b"\0"
        return any(needle in data for kind, data in self._objects if kind == OBJ_TYPE_ELF)

    @cached_property
    def feature_variables(self) -> list[str]:
        """``feature_*`` variables grub's normal mode sets to "y" (named in the binary itself)."""
        names = set()
        start = self.data.find(b"feature_")
        while start >= 0:
            end = start
            while end < len(self.data) and (chr(self.data[end]).isalnum() or self.data[end] == 0x5F):
                end += 1
            if self.data[end : end + 1] == b"\0":
                names.add(self.data[start:end].decode())
            start = self.data.find(b"feature_", end)
        return sorted(names)
