"""What this host offers for running guests: QEMU and its TDX support, KVM (and whether it
really starts a guest), the CPU vendor, and the UEFI firmware (OVMF, TDVF) installed where
distributions put it -- including whether a TDVF records a TD's boot in RTMRs at all, read from
its firmware volumes (firmware.py)."""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError
from ..core.inputs import require_regular_file
from . import runner
from .firmware import FirmwareError, FirmwareImage, volumes

QEMU = "qemu-system-x86_64"
# Debian's ovmf package: the code is mapped read-only, the variable store template is used
# through snapshot=on so every launch starts from a clean store and nothing is written back.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Where distributions install OVMF without Secure Boot enforcement, as (code, variable store
# template): Debian/Ubuntu (4 MiB, then the older 2 MiB build), Fedora/RHEL, SUSE.
FLASH_MAX_BYTES = 64 * 2**20  # OVMF's are 2 or 4 MiB, TDVF's 4 MiB
OVMF_CANDIDATES = (
    (OVMF_CODE, OVMF_VARS),
    (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")),
    (Path("/usr/share/edk2/ovmf/OVMF_CODE.fd"), Path("/usr/share/edk2/ovmf/OVMF_VARS.fd")),
    (Path("/usr/share/qemu/ovmf-x86_64-4m-code.bin"), Path("/usr/share/qemu/ovmf-x86_64-4m-vars.bin")),
    (Path("/usr/share/qemu/ovmf-x86_64-code.bin"), Path("/usr/share/qemu/ovmf-x86_64-vars.bin")),
)
# Debian's Secure Boot build (SMM, Microsoft's keys enrolled, so Microsoft-signed shim starts):
# the reference VM of `boot --tpm --secure-boot`.
OVMF_SECURE_BOOT = (Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd"),
                    Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"))
# Where distributions install a TDX-capable OVMF (TDVF): Debian/Ubuntu's unified OVMF.fd (what
# canonical/tdx run_td passes), Fedora/CentOS, SUSE's TDX demo.
TDVF_CANDIDATES = (
    Path("/usr/share/ovmf/OVMF.fd"),
    Path("/usr/share/edk2/ovmf/OVMF.inteltdx.fd"),
    Path("/usr/share/qemu/tdvf-x86_64.bin"),
)
# The OVMF package of each distribution family (ID/ID_LIKE in /etc/os-release).
FIRMWARE_INSTALL = {"debian": "apt-get install ovmf", "fedora": "dnf install edk2-ovmf",
                    "suse": "zypper install qemu-ovmf-x86_64"}
# A firmware image is TDVF when its OVMF table carries this entry (QEMU hw/i386/tdvf.c,
# TDX_METADATA_OFFSET_GUID); the table sits in the image's last kilobytes.
TDVF_METADATA_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
FIRMWARE_TABLE_BYTES = 4096
KVM_TDX_PARAMETER = Path("/sys/module/kvm_intel/parameters/tdx")
KVM_DEVICE = "/dev/kvm"
KVM_FAILURE = "KVM internal error"
# OVMF prints this on the serial console as soon as it picks a boot option.
FIRMWARE_STARTED = "BdsDxe:"
KVM_PROBE_SECONDS = 20.0
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Firmware:
    """UEFI firmware for a plain VM: code and variable store template, or one unified image."""

    code: Path
    variables: Path | None = None
    secure_boot: bool = False  # an SMM build that enforces Secure Boot

    def machine_args(self) -> list[str]:
        """QEMU's machine for this firmware: a Secure Boot build keeps its variables behind SMM,
        so the machine has SMM and the flash answers only to it (edk2 OvmfPkg/README)."""
        if not self.secure_boot:
            return ["-machine", "q35"]
        return ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]

    def pflash_drives(self) -> list[str]:
        # The code is never written; the variables are written to a throwaway layer (snapshot).
        if self.variables is None:
            return ["-drive", f"if=pflash,format=raw,snapshot=on,file={self.code}"]
        return ["-drive", f"if=pflash,format=raw,readonly=on,file={self.code}",
                "-drive", f"if=pflash,format=raw,snapshot=on,file={self.variables}"]


def find_secure_boot_ovmf() -> Firmware | None:
    code, variables = OVMF_SECURE_BOOT
    return Firmware(code, variables, secure_boot=True) if code.is_file() and variables.is_file() else None


def find_ovmf() -> Firmware | None:
    return next((Firmware(code, variables) for code, variables in OVMF_CANDIDATES
                 if code.is_file() and variables.is_file()), None)


def require_firmware_volume(path: Path) -> None:
    """``--firmware`` must be UEFI firmware: a flash image (whole 4 KiB blocks, at most
    FLASH_MAX_BYTES) holding a firmware volume whose header checks out (firmware.volumes), as
    OVMF and TDVF do.  Anything else (/etc/shadow) would run QEMU to the timeout, or hand a host
    file to the guest's flash."""
    require_regular_file(path, "--firmware")
    size = path.stat().st_size
    if size % 4096 or size > FLASH_MAX_BYTES or not volumes(path.read_bytes()):
        raise InputError(f"--firmware {path} is not UEFI firmware (no firmware volume header)",
                         "give OVMF's or TDVF's .fd file")


def firmware_for(path: Path) -> Firmware:
    """``--firmware FILE`` for a plain VM: a known code file gets its variable store template,
    any other file is used as a unified image (code and variables in one)."""
    require_firmware_volume(path)
    variables = dict(OVMF_CANDIDATES).get(path)
    return Firmware(path, variables if variables and variables.is_file() else None)


def firmware_install_hint(family: str | None) -> str:
    """How to install OVMF on the distribution ``family`` (os_release.host_family())."""
    if family:
        return FIRMWARE_INSTALL[family]
    return "install OVMF: " + "; ".join(f"{name}: {command}"
                                        for name, command in FIRMWARE_INSTALL.items())


def is_tdvf(firmware: Path) -> bool:
    try:
        with open(firmware, "rb") as image:
            image.seek(max(0, firmware.stat().st_size - FIRMWARE_TABLE_BYTES))
            return TDVF_METADATA_GUID in image.read()
    except OSError:
        return False


def td_measured_boot(firmware: Path) -> bool | None:
    """Whether a TD booted with ``firmware`` records its boot in RTMR0-2 and the CCEL: the
    firmware has TdTcg2Dxe. None: its firmware volumes could not be read."""
    try:
        return FirmwareImage.read(firmware).records_rtmr_events
    except FirmwareError:
        return None


def td_firmware_note(firmware: Path, measured: bool | None) -> str | None:
    """What a TDVF without measured boot (``td_measured_boot``) means for attestation; None
    when it has measured boot."""
    if measured:
        return None
    if measured is None:
        return (f"{firmware}: its firmware volumes could not be read, so whether a TD records its "
                "boot in RTMRs is unknown")
    return (f"{firmware} has no TdTcg2Dxe: a TD booted with it records nothing in RTMR0-2 and "
            "keeps no CCEL event log, so its quote attests the firmware (MRTD) alone, not the "
            "boot loader, kernel, command line or root; use a TDVF with TdTcg2Dxe (Debian 13's "
            "ovmf 2025.02 OVMF.fd has it)")


def find_tdvf() -> Path | None:
    """The first TDVF installed, preferring one that records the boot in RTMRs."""
    found = [path for path in TDVF_CANDIDATES if is_tdvf(path)]
    return next((path for path in found if td_measured_boot(path)), found[0] if found else None)


def qemu_version() -> str:
    """``7.2.22`` from ``QEMU emulator version 7.2.22 (Debian ...)``, or "" without QEMU."""
    match = re.search(r"version (\S+)", runner.probe([QEMU, "--version"]))
    return match.group(1) if match else ""


def qemu_has_tdx_guest() -> bool:
    return "tdx-guest" in runner.probe([QEMU, "-object", "help"]).split()


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        match = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo.read_text(), re.MULTILINE)
    except OSError:
        return "unknown"
    return match.group(1) if match else "unknown"


def kvm_tdx_enabled(parameter: Path = KVM_TDX_PARAMETER) -> str:
    """'Y' or 'N' from kvm_intel's tdx parameter, or "" when kvm_intel is not loaded."""
    try:
        return parameter.read_text().strip()
    except OSError:
        return ""


def read(path: Path) -> str:
    """What a program has written to ``path`` so far ("" before it has)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@contextmanager
def running(args: list[str], output: Path):
    """QEMU (or swtpm) writing to ``output``, stopped and reaped on exit, killed by the kernel
    if we die first."""
    with open(output, "wb") as sink, \
            runner.Process(args, stdout=sink, stderr=sink, die_with_parent=True) as process:
        yield process


def kvm_failure() -> str | None:
    """Why KVM cannot run a UEFI guest on this host, or None when it can.

    /dev/kvm can exist and QEMU still stop at the firmware's first instructions with "KVM
    internal error" (nested or partial virtualisation), so the firmware alone is started under
    KVM and must reach its boot manager.
    """
    if not os.path.exists(KVM_DEVICE):
        return f"{KVM_DEVICE} is absent"
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return f"{KVM_DEVICE} is not accessible to this user"
    with tempfile.TemporaryDirectory(prefix="tdx-image-kvm-") as work:
        console, output = Path(work) / "console", Path(work) / "qemu.out"
        firmware = find_ovmf() or Firmware(OVMF_CODE, OVMF_VARS)
        probe = [QEMU, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "256",
                 "-nodefaults", "-display", "none", "-no-reboot", "-serial", f"file:{console}",
                 *firmware.pflash_drives()]
        with running(probe, output) as process:
            deadline = time.monotonic() + KVM_PROBE_SECONDS
            while time.monotonic() < deadline:
                if FIRMWARE_STARTED in read(console):
                    return None
                errors = read(output)
                if KVM_FAILURE in errors:
                    first = errors[errors.index(KVM_FAILURE):].splitlines()[0]
                    detail = " (emulation failure)" if "emulation failure" in errors else ""
                    return f"QEMU stops with '{first}'{detail}"
                if process.poll() is not None:
                    return f"QEMU exited: {(errors.strip().splitlines() or ['no output'])[-1]}"
                time.sleep(POLL_SECONDS)
    return f"the firmware printed nothing within {KVM_PROBE_SECONDS:.0f} s under KVM"
