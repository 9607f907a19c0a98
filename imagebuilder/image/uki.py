"""A unified kernel image (UAPI UKI specification): its PE/COFF sections, read from the bytes.

systemd-stub starts the kernel in ``.linux`` with the initrd in ``.initrd`` and the command line in
``.cmdline``; ``.osrel`` (os-release) and ``.uname`` (the kernel's version) describe it.  The
stub measures each section it uses (PCR 11) and the command line it passes (PCR 12); which of these
reach a TD's RTMR2 is measure/'s business: this module only reads the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PE_SIGNATURE = b"PE\0\0"
COFF_HEADER = struct.Struct("<HHIIIHH")  # machine, sections, time, symbols at, symbols, optional size, flags
SECTION_HEADER = struct.Struct("<8sIIII12xI")  # name, virtual size/address, raw size/pointer, flags
# What a UKI of this project must carry for the boot to be the measured one (UAPI UKI spec).
REQUIRED_SECTIONS = (".linux", ".initrd", ".cmdline", ".osrel", ".uname")


class UkiError(Exception):
    """The file is no PE/COFF image."""


@dataclass(frozen=True)
class Uki:
    sections: dict[str, bytes]  # name -> the section's bytes (its virtual size, as the stub uses it)

    @property
    def cmdline(self) -> str:
        """The kernel command line as the stub passes it: ukify ends it with no NUL, others may."""
        return self.sections.get(".cmdline", b"").rstrip(b"\0").decode(errors="replace").strip()

    @property
    def uname(self) -> str:
        return self.sections.get(".uname", b"").rstrip(b"\0").decode(errors="replace").strip()

    @property
    def os_release(self) -> dict[str, str]:
        fields = {}
        for line in self.sections.get(".osrel", b"").decode(errors="replace").splitlines():
            key, equals, value = line.partition("=")
            if equals and not key.startswith("#"):
                fields[key.strip()] = value.strip().strip("\"'")
        return fields

    def missing(self) -> list[str]:
        return [name for name in REQUIRED_SECTIONS if name not in self.sections]


def read_uki(data: bytes) -> Uki:
    if data[:2] != b"MZ" or len(data) < 0x40:
        raise UkiError("no MZ header: not a PE/COFF image")
    (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
    if data[pe_offset:pe_offset + 4] != PE_SIGNATURE:
        raise UkiError("no PE signature: not a PE/COFF image")
    coff = pe_offset + 4
    if coff + COFF_HEADER.size > len(data):
        raise UkiError("truncated COFF header")
    _, count, _, _, _, optional_size, _ = COFF_HEADER.unpack_from(data, coff)
    table = coff + COFF_HEADER.size + optional_size
    sections = {}
    for index in range(count):
        start = table + index * SECTION_HEADER.size
        if start + SECTION_HEADER.size > len(data):
            raise UkiError(f"truncated section table (section {index} of {count})")
        raw_name, virtual_size, _, raw_size, pointer, _ = SECTION_HEADER.unpack_from(data, start)
        name = raw_name.rstrip(b"\0").decode(errors="replace")
        length = min(virtual_size, raw_size) if virtual_size else raw_size
        if pointer + length > len(data):
            raise UkiError(f"section {name} reaches past the end of the file")
        sections[name] = data[pointer:pointer + length]
    return Uki(sections)
