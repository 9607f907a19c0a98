"""What a unified kernel image (UKI) measures when systemd-stub 257 starts it.

The firmware measures the UKI (PCR 4, Authenticode) when it loads it. systemd-stub then
(``src/boot/stub.c`` run()):

1. measure_sections: for each UKI section in systemd's fixed order (``src/fundamental/uki.c``
   unified_sections; ``.pcrsig`` excluded by unified_section_measure), first the section name
   with its NUL, then the section's bytes as loaded (VirtualSize, zero-filled past the raw
   data) -- two EV_IPL events into PCR 11, described by the name;
2. settle_command_line: a command line passed in LoadOptions is measured into PCR 12 (and, with
   Secure Boot off, used); with none the ``.cmdline`` section is the command line and PCR 12
   gets nothing;
3. addons, credentials, sysexts, confexts from the ESP (PCR 12/13) -- not modelled: their
   presence makes the prediction unpredicted;
4. linux_exec: LoadImage of ``.linux`` from memory: the firmware measures its Authenticode hash
   into PCR 4 (edk2 DxeTpm2MeasureBootLib; the security override is only installed under Secure
   Boot), then the initrd goes out through LINUX_EFI_INITRD_MEDIA and the command line as the
   kernel's LoadOptions (UTF-16, NUL-terminated).

The kernel's EFI stub (6.12) then measures LoadOptions and the initrd into PCR 9 (see
components.py). Everything in PCR 9-15 maps to RTMR2 in a TD, PCR 4 to RTMR1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from . import components
from .efi import EfiError, PeImage

# src/fundamental/uki.c, in measuring order; .pcrsig is never measured.
UNIFIED_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname",
                    ".sbat", ".pcrsig", ".pcrpkey", ".profile", ".dtbauto", ".hwids")
UNMEASURED_SECTIONS = {".pcrsig"}
# stub.c generate_embedded_initrds: sections the stub hands to the kernel as one-file cpio
# archives under /.extra, in the initrd order of stub.c's INITRD_* enum (after .ucode and .initrd).
EMBEDDED_INITRDS = ((".pcrsig", "tpm2-pcr-signature.json"), (".pcrpkey", "tpm2-pcr-public-key.pem"),
                    (".osrel", "os-release"), (".profile", "profile"))
EXTRA_DIR = ".extra"
CPIO_TRAILER = (b"070701" + b"00000000" * 4 + b"00000001" + b"00000000" * 6 + b"0000000B" + b"00000000"
                + b"TRAILER!!!\0\0\0\0")  # cpio.c pack_cpio_trailer, with the string's own NUL
S_IFDIR, S_IFREG = 0o040000, 0o100000
STUB_KERNEL_BOOT_PCR = 11  # TPM2_PCR_KERNEL_BOOT
KERNEL_INITRD_PCR = 9
# linux/drivers/firmware/efi/libstub/efi-stub-helper.c events[]
LOAD_OPTIONS_EVENT = "LOADED_IMAGE::LoadOptions"
INITRD_EVENT = "Linux initrd"
# After the boot, systemd 257's systemd-pcrextend measures phase words into PCR 11 (TPM only:
# 257 has no CC path there) from units/systemd-pcrphase*.service.in, when the stub measured the
# UKI (ConditionSecurity=measured-uki): in the initrd when initrd.target wants the initrd unit,
# in the root when sysinit.target wants the others -- and only where it can dlopen all three
# TSS2 libraries: with --graceful it otherwise exits without measuring (pcrextend.c
# tpm2_is_fully_supported; tpm2-util.c dlopen_tpm2_esys/_rc/_mu). The digest is the SHA-384
# of the word.
SYSTEMD_UNITS = "usr/lib/systemd/system"
TSS2_LIBRARIES = ("libtss2-esys.so.0", "libtss2-rc.so.0", "libtss2-mu.so.0")
LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib")  # Debian's, then SUSE's
INITRD_PHASES = (("initrd.target.wants/systemd-pcrphase-initrd.service", ("enter-initrd", "leave-initrd")),)
ROOT_PHASES = (("sysinit.target.wants/systemd-pcrphase-sysinit.service", ("sysinit",)),
               ("sysinit.target.wants/systemd-pcrphase.service", ("ready",)))


@dataclass(frozen=True)
class Measured:
    pcr: int
    tagged: bool  # EV_EVENT_TAG (else EV_IPL)
    description: str
    data: bytes
    by: components.Component


def mangle_cmdline(text: str) -> str:
    """systemd-stub's mangle_stub_cmdline (src/boot/util.c): leading whitespace dropped, inner
    control characters turned into spaces, trailing whitespace cut."""
    kept = "".join(" " if ord(c) <= 0x20 or c == "\x7f" else c for c in text)
    return kept.strip(" ")


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _cpio_header(inode: int, mode: int, size: int, name_size: int) -> bytes:
    words = (inode, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, name_size, 0)
    return b"070701" + b"".join(b"%08x" % word for word in words)


def literal_cpio(directory: str, filename: str, data: bytes) -> bytes:
    """cpio.c pack_cpio_literal(data, directory, filename, 0555, 0444): the directory inode,
    the file, the trailer; every record padded to 4 bytes from the archive's start."""
    archive = _pad4(_cpio_header(1, 0o555 | S_IFDIR, 0, len(directory) + 1) + directory.encode() + b"\0")
    path = f"{directory}/{filename}".encode() + b"\0"
    archive = _pad4(archive + _cpio_header(2, 0o444 | S_IFREG, len(data), len(path)) + path)
    return _pad4(archive + data) + CPIO_TRAILER


class Uki(PeImage):
    """A PE image whose ``.sdmagic`` names systemd-stub and which carries ``.linux``."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data, name)
        if self.loaded_section(".linux") is None:
            raise EfiError(f"{name} has no .linux section: not a UKI")

    def loaded_section(self, wanted: str) -> bytes | None:
        """A section as the firmware loads it: VirtualSize bytes, zero-filled past the file's
        raw data (systemd-stub measures memory, pe.c memory_size = VirtualSize)."""
        for section in self.binary.sections:
            if section.name == wanted:  # UKI section names fit in 8 characters (uki.c)
                raw = self.data[section.offset : section.offset + min(section.size, section.virtual_size)]
                return raw + bytes(section.virtual_size - len(raw))
        return None

    @cached_property
    def stub(self) -> components.Component:
        return components.systemd_stub(self)

    @cached_property
    def kernel(self) -> PeImage:
        return PeImage(self.loaded_section(".linux") or b"", f"{self.name}:.linux")

    @cached_property
    def linux(self) -> components.Component:
        return components.linux(self.kernel.data)

    @property
    def section_names(self) -> list[str]:
        return [name for name in UNIFIED_SECTIONS if self.loaded_section(name) is not None]

    @property
    def cmdline(self) -> str | None:
        """The command line the stub hands the kernel when nothing is passed in LoadOptions:
        ``.cmdline`` up to its first NUL, UTF-8, mangled; None without the section."""
        raw = self.loaded_section(".cmdline")
        if not raw:
            return None
        return mangle_cmdline(raw.split(b"\0", 1)[0].decode("utf-8", errors="replace"))

    def unmodelled(self) -> str | None:
        """Why this UKI's measurements are outside the model, or None."""
        if self.stub.version is None:
            return f"{self.name}: {self.stub.why}"
        number = components.version_tuple(self.stub.version)
        if number is None or number[0] != components.STUB_MODELLED:
            return (f"{self.stub.label}: the event list is modelled on systemd-stub "
                    f"{components.STUB_MODELLED}'s source only")
        if ".profile" in self.section_names:
            return f"{self.name} is a multi-profile UKI: which profile boots is not modelled"
        return None

    def stub_events(self) -> list[Measured]:
        """measure_sections (stub.c): name with NUL, then the data, per present section."""
        events = []
        for name in self.section_names:
            if name in UNMEASURED_SECTIONS:
                continue
            events.append(Measured(STUB_KERNEL_BOOT_PCR, False, name, name.encode() + b"\0", self.stub))
            events.append(Measured(STUB_KERNEL_BOOT_PCR, False, name, self.loaded_section(name) or b"",
                                   self.stub))
        return events

    def kernel_events(self) -> list[Measured]:
        """The kernel EFI stub's PCR 9 events: LoadOptions (the stub's command line as UTF-16
        with its NUL, when the stub passes one) and then the initrd (when it is the .initrd
        section alone)."""
        events = []
        cmdline = self.cmdline
        if cmdline is not None:
            events.append(Measured(KERNEL_INITRD_PCR, True, LOAD_OPTIONS_EVENT,
                                   (cmdline + "\0").encode("utf-16-le"), self.linux))
        initrd = self.initrd
        if initrd:
            events.append(Measured(KERNEL_INITRD_PCR, True, INITRD_EVENT, initrd, self.linux))
        return events

    @property
    def initrd(self) -> bytes:
        """What the stub hands the kernel through LINUX_EFI_INITRD_MEDIA when the ESP has no
        credentials, sysexts, confexts or addons: .ucode, .initrd, then the /.extra cpio
        archives of EMBEDDED_INITRDS; more than one is concatenated with each padded to 4 bytes
        (stub.c run(): extend_initrds, combine_initrds)."""
        parts = [self.loaded_section(".ucode"), self.loaded_section(".initrd")]
        parts += [literal_cpio(EXTRA_DIR, filename, data) for section, filename in EMBEDDED_INITRDS
                  if (data := self.loaded_section(section)) is not None]
        present = [part for part in parts if part]
        if len(present) == 1:
            return present[0]
        return b"".join(_pad4(part) for part in present)


def measures_phases(exists) -> bool:
    """Whether systemd-pcrextend can measure in a file system where ``exists(path)`` (a path
    relative to its root) tells what is there: it can dlopen every TSS2 library."""
    return all(any(exists(f"{directory}/{library}") for directory in LIBRARY_DIRS)
               for library in TSS2_LIBRARIES)
