"""Who measures what: each boot component told from its own binary (its version string), and
what that version measures in a TD, with the source that says so.

"In a TD" means a trust domain whose firmware has TdTcg2Dxe (EFI_CC_MEASUREMENT_PROTOCOL) and
no vTPM. A component's ``in_td`` is True when its events reach the RTMRs there, False when they
do not, None when nobody here could establish it for that version (the RTMR is then reported
unpredicted, never guessed). The TPM view (a VM with a software TPM) is the same events through
EFI_TCG2_PROTOCOL.

- shim (rhboot/shim#485, merged 2022-06, first released in 15.7): ``tpm.c`` logs every event
  through the CC protocol as well as TCG2.
- grub: Debian 12's 2.06 has no CC code at all. grub 2.12 (upstream commits 4c76565b, 86df7927)
  and SUSE's 2.06 with the PED-1265 patches log through CC, but ``commands/tpm.c`` registers the
  measuring verifier only ``if (grub_tpm_present ())``, which looks for TCG/TCG2 alone (SUSE:
  Patch918 ``0001-tpm-Disable-tpm-verifier-if-tpm-is-not-present.patch``). So without a vTPM no
  grub event reaches any RTMR; with one they reach the TPM's PCR 8/9 (and, for CC-capable
  builds, RTMR2 as well). Later grub versions: unknown.
- systemd-stub: CC since 255 (NEWS, "CHANGES WITH 255"); 257's event order and data are read
  from its source (``src/boot/stub.c`` measure_sections, ``src/boot/measure.c``
  tpm_log_ipl_event: CC first, then TCG2). Its EV_EVENT_TAG events (profile, DTB/initrd/ucode
  addons: ``tpm_log_tagged_event``) go to TCG2 only in 257 (systemd#41099 changed that later).
- Linux EFI stub 6.12 (``drivers/firmware/efi/libstub/efi-stub-helper.c``
  efi_measure_tagged_event): LoadOptions and the initrd from LINUX_EFI_INITRD_MEDIA into PCR 9 as
  EV_EVENT_TAG, through TCG2 when present, otherwise through CC (never both). Other versions:
  unknown here.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .efi import GrubImage, PeImage

SHIM_VERSION = re.compile(rb"UEFI SHIM\n\$Version: ([0-9][0-9A-Za-z.~+-]*) \$")
# grub's normal.mod prints its banner from these two adjacent strings (normal/main.c:
# grub_printf_ (N_("GNU GRUB  version %s"), PACKAGE_VERSION)).
GRUB_BANNER = b"GNU GRUB  version %s\0"
# systemd's EFI binaries carry ".sdmagic": "#### LoaderInfo: systemd-stub 257.13-1~deb13u1 ####".
SDMAGIC = re.compile(rb"#### LoaderInfo: (systemd-[a-z]+) ([0-9][^ ]*) ####")
LEADING_VERSION = re.compile(r"(\d+)(?:\.(\d+))?")
# x86 boot protocol: "HdrS" at 0x202, kernel_version (pointer - 0x200) at 0x20E.
BZIMAGE_MAGIC_OFFSET, BZIMAGE_VERSION_POINTER = 0x202, 0x20E

SHIM_CC_SINCE = (15, 7)
STUB_CC_SINCE = 255
STUB_MODELLED = 257  # the version whose source the UKI event list follows
GRUB_NO_RTMR_WITHOUT_VTPM = ((2, 6), (2, 12))  # versions whose behaviour was read
KERNEL_MODELLED = (6, 12)


@dataclass(frozen=True)
class Component:
    name: str  # shim, grub, systemd-stub, linux
    version: str | None  # None: the binary does not say
    in_td: bool | None  # its events reach RTMRs in a TD without vTPM; None: unknown
    why: str  # the source of in_td, one line

    @property
    def label(self) -> str:
        return f"{self.name} {self.version or '(version unknown)'}"


def version_tuple(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a version string such as 2.12-9+deb13u4 or 257.13-1~deb13u1."""
    match = LEADING_VERSION.match(version or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def shim(image: PeImage) -> Component:
    match = SHIM_VERSION.search(image.data)
    version = match.group(1).decode() if match else None
    number = version_tuple(version)
    if number is None:
        return Component("shim", version, None, "shim's version string is missing: unknown")
    if number >= SHIM_CC_SINCE:
        return Component("shim", version, True, "shim >= 15.7 logs through EFI_CC_MEASUREMENT_PROTOCOL "
                         "too (rhboot/shim#485, tpm.c)")
    return Component("shim", version, False, "shim before 15.7 has no CC measurement (rhboot/shim#485)")


def grub_version(image: GrubImage) -> str | None:
    """PACKAGE_VERSION: the string after the banner format in the built-in normal module."""
    start = image.data.find(GRUB_BANNER)
    if start < 0:
        return None
    start += len(GRUB_BANNER)
    value = image.data[start : image.data.find(b"\0", start)].decode(errors="replace")
    return value if version_tuple(value) else None


def grub(image: GrubImage) -> Component:
    version = grub_version(image)
    number = version_tuple(version)
    if number in GRUB_NO_RTMR_WITHOUT_VTPM:
        why = ("grub 2.06 (Debian) has no CC code; 2.12 and SUSE's 2.06 (PED-1265) have it but "
               "register their measuring verifier only when a TPM is present (commands/tpm.c "
               "grub_tpm_present): without a vTPM none of grub's events reaches an RTMR")
        return Component("grub", version, False, why)
    return Component("grub", version, None, f"grub {version or '(version unknown)'}: whether it "
                     "measures into RTMRs without a TPM was not established")


def systemd_efi_binary(image: PeImage) -> tuple[str, str] | None:
    """("systemd-stub" | "systemd-boot" | "systemd-addon", version) from ``.sdmagic``."""
    magic = image.section(".sdmagic")
    match = SDMAGIC.search(magic or b"")
    return (match.group(1).decode(), match.group(2).decode()) if match else None


def systemd_stub(image: PeImage) -> Component:
    found = systemd_efi_binary(image)
    if found is None or found[0] != "systemd-stub":
        return Component("systemd-stub", None, None, f"{image.name} has no systemd-stub .sdmagic")
    version = found[1]
    number = version_tuple(version)
    if number is None:
        return Component("systemd-stub", version, None, "unreadable systemd-stub version")
    if number[0] >= STUB_CC_SINCE:
        return Component("systemd-stub", version, True, "systemd-stub >= 255 measures through "
                         "EFI_CC_MEASUREMENT_PROTOCOL first, no TPM needed (NEWS 255; 257 "
                         "src/boot/measure.c tpm_log_ipl_event)")
    return Component("systemd-stub", version, False, "systemd-stub before 255 measures into a TPM only")


def linux_version(kernel: bytes) -> str | None:
    """The version string of an x86 bzImage (boot protocol setup header)."""
    if kernel[BZIMAGE_MAGIC_OFFSET : BZIMAGE_MAGIC_OFFSET + 4] != b"HdrS":
        return None
    (pointer,) = struct.unpack_from("<H", kernel, BZIMAGE_VERSION_POINTER)
    start = pointer + 0x200
    end = kernel.find(b"\0", start, start + 256)
    return kernel[start:end].decode(errors="replace").split(" ")[0] if end > start else None


def linux(kernel: bytes) -> Component:
    version = linux_version(kernel)
    number = version_tuple(version)
    if number is not None and number[:2] == KERNEL_MODELLED:
        return Component("linux", version, True, "the 6.12 EFI stub measures LoadOptions and the "
                         "initrd through TCG2, else through CC (libstub efi-stub-helper.c "
                         "efi_measure_tagged_event)")
    return Component("linux", version, None, f"the EFI stub of linux {version or '(version unknown)'} "
                     "was not read: whether it measures through CC is unknown")
