"""How a guest image is launched: the QEMU command line and the equivalent libvirt domain, for a
plain UEFI VM and for an Intel TDX trust domain (TD); the firmware and the host facts a launch
depends on (which OVMF and TDVF, KVM, QEMU's TDX support), and which accelerator to use.

The TD launch follows QEMU's docs/system/i386/tdx.rst (tdx-guest object, split kernel irqchip,
confidential-guest-support, firmware via -bios because a TD has no read-only memory for pflash)
and libvirt's ``<launchSecurity type='tdx'>``; tests/test_launch.py cites what each part is
checked against.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import distro, runner
from .errors import HostError, InputError


QEMU = "qemu-system-x86_64"
# Debian's ovmf package: the code is mapped read-only, the variable store template is used
# through snapshot=on so every launch starts from a clean store and nothing is written back.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Where distributions install OVMF without Secure Boot enforcement, as (code, variable store
# template): Debian/Ubuntu (4 MiB, then the older 2 MiB build), Fedora/RHEL, SUSE.
OVMF_CANDIDATES = (
    (OVMF_CODE, OVMF_VARS),
    (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")),
    (Path("/usr/share/edk2/ovmf/OVMF_CODE.fd"), Path("/usr/share/edk2/ovmf/OVMF_VARS.fd")),
    (Path("/usr/share/qemu/ovmf-x86_64-4m-code.bin"), Path("/usr/share/qemu/ovmf-x86_64-4m-vars.bin")),
    (Path("/usr/share/qemu/ovmf-x86_64-code.bin"), Path("/usr/share/qemu/ovmf-x86_64-vars.bin")),
)
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
# The Quote Generation Service (QGS) a TD asks for its attestation quotes: QEMU's tdx-guest
# property quote-generation-socket (docs/system/i386/tdx.rst), by default on the host's vsock
# CID 2, port 4050, as Intel's QGS listens (canonical/tdx run_td passes the same).
DEFAULT_QGS = "vsock:2:4050"
# A firmware image is TDVF when its OVMF table carries this entry (QEMU hw/i386/tdvf.c,
# TDX_METADATA_OFFSET_GUID); the table sits in the image's last kilobytes.
TDVF_METADATA_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
FIRMWARE_TABLE_BYTES = 4096
TDX_OBJECT_ID = "tdx0"
# TD attribute bit 28, SEPT_VE_DISABLE: Linux TD guests refuse to boot without it. It is the
# default of QEMU's tdx-guest object and the value libvirt documents for <policy>.
TDX_POLICY = "0x10000000"
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

    def pflash_drives(self) -> list[str]:
        # The code is never written; the variables are written to a throwaway layer (snapshot).
        if self.variables is None:
            return ["-drive", f"if=pflash,format=raw,snapshot=on,file={self.code}"]
        return ["-drive", f"if=pflash,format=raw,readonly=on,file={self.code}",
                "-drive", f"if=pflash,format=raw,snapshot=on,file={self.variables}"]


def find_ovmf() -> Firmware | None:
    return next((Firmware(code, variables) for code, variables in OVMF_CANDIDATES
                 if code.is_file() and variables.is_file()), None)


def firmware_for(path: Path) -> Firmware:
    """``--firmware FILE`` for a plain VM: a known code file gets its variable store template,
    any other file is used as a unified image (code and variables in one)."""
    if not path.is_file():
        raise InputError(f"--firmware {path}: no such file")
    variables = dict(OVMF_CANDIDATES).get(path)
    return Firmware(path, variables if variables and variables.is_file() else None)


def firmware_install_hint() -> str:
    family = distro.host_family()
    if family:
        return FIRMWARE_INSTALL[family]
    return "install OVMF: " + "; ".join(f"{name}: {command}"
                                        for name, command in FIRMWARE_INSTALL.items())


def qgs_object_properties(qgs: str | None) -> dict:
    """``quote-generation-socket`` of QEMU's tdx-guest from ``vsock:CID:PORT`` or ``unix:PATH``."""
    if not qgs:
        return {}
    kind, _, rest = qgs.partition(":")
    if kind == "vsock" and re.fullmatch(r"\d+:\d+", rest):
        cid, port = rest.split(":")
        return {"quote-generation-socket": {"type": "vsock", "cid": cid, "port": port}}
    if kind == "unix" and rest.startswith("/"):
        return {"quote-generation-socket": {"type": "unix", "path": rest}}
    raise InputError(f"--qgs {qgs}: not vsock:CID:PORT or unix:/PATH",
                     f"the default is {DEFAULT_QGS}; 'none' launches without attestation")


@dataclass(frozen=True)
class Launch:
    """One VM: its disk and size, the accelerator, and whether it is a TD."""

    disk: Path | None  # None: the firmware alone (the KVM probe)
    disk_format: str = "qcow2"
    memory_mib: int = 2048
    cpus: int = 2
    accel: str = "kvm"
    tdx: bool = False
    tdvf: Path | None = None  # the firmware of a TD; plain VMs use OVMF_CODE/OVMF_VARS
    firmware: Firmware | None = None  # a plain VM's; None: the host's OVMF (else Debian's paths)
    serial: str = "mon:stdio"  # QEMU -serial backend: the console, or file:LOG for a boot test
    snapshot: bool = False  # write to a temporary layer instead of the disk
    # A software TPM 2.0 (swtpm's control socket) on tpm-tis: the reference VM for measured
    # boot, which also has no NIC, so the image is the only boot device.
    tpm_socket: Path | None = None
    ssh_port: int | None = None  # forward 127.0.0.1:PORT on the host to the guest's port 22
    qgs: str | None = DEFAULT_QGS  # a TD's Quote Generation Service; None: no attestation

    def __post_init__(self):
        if self.tdx and (self.accel != "kvm" or self.tdvf is None):
            raise InputError("a TD needs --accel kvm and TDVF firmware",
                             "drop --accel tcg, or pass --firmware FILE")
        if self.tdx:
            qgs_object_properties(self.qgs)  # refuse a malformed address before anything runs

    def qemu_args(self) -> list[str]:
        # -nodefaults: no legacy devices (a TD has no emulated VGA, IDE or floppy);
        # -no-reboot: a guest reset ends QEMU (TDs cannot be reset; a boot test must not loop).
        args = [QEMU, "-accel", self.accel, "-m", str(self.memory_mib), "-smp", str(self.cpus),
                "-nodefaults", "-display", "none", "-no-reboot", "-serial", self.serial]
        if self.accel == "kvm":
            args += ["-cpu", "host"]
        if self.tdx:
            # The JSON form: QEMU's documented way to give the nested socket address.
            tdx_object = {"qom-type": "tdx-guest", "id": TDX_OBJECT_ID,
                          **qgs_object_properties(self.qgs)}
            args += ["-machine",
                     f"q35,kernel_irqchip=split,confidential-guest-support={TDX_OBJECT_ID}",
                     "-object", json.dumps(tdx_object, separators=(",", ":")),
                     "-bios", str(self.tdvf)]
        else:
            firmware = self.firmware or find_ovmf() or Firmware(OVMF_CODE, OVMF_VARS)
            args += ["-machine", "q35", *firmware.pflash_drives()]
        if self.tpm_socket is not None:
            args += ["-chardev", f"socket,id=chrtpm,path={self.tpm_socket}",
                     "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
        if self.disk is not None:
            disk = f"file={self.disk},if=virtio,format={self.disk_format}"
            args += ["-drive", disk + (",snapshot=on" if self.snapshot else "")]
            if self.tpm_socket is None:
                netdev = "user,id=net0"
                if self.ssh_port:
                    netdev += f",hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
                args += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0"]
        return args

    def libvirt_xml(self, name: str) -> str:
        """The same VM as a libvirt domain (``virsh define``)."""
        domain = ET.Element("domain", type="kvm" if self.accel == "kvm" else "qemu")
        ET.SubElement(domain, "name").text = name
        ET.SubElement(domain, "memory", unit="MiB").text = str(self.memory_mib)
        ET.SubElement(domain, "vcpu").text = str(self.cpus)
        os_element = ET.SubElement(domain, "os")
        ET.SubElement(os_element, "type", arch="x86_64", machine="q35").text = "hvm"
        features = ET.SubElement(domain, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
        if self.tdx:
            # type='rom' is libvirt's -bios; ioapic driver='qemu' its kernel_irqchip=split.
            ET.SubElement(os_element, "loader", type="rom", readonly="yes").text = str(self.tdvf)
            ET.SubElement(features, "ioapic", driver="qemu")
        else:
            os_element.set("firmware", "efi")
        if self.accel == "kvm":
            ET.SubElement(domain, "cpu", mode="host-passthrough")
        ET.SubElement(domain, "on_reboot").text = "destroy"
        devices = ET.SubElement(domain, "devices")
        if self.disk is not None:
            disk = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(disk, "driver", name="qemu", type=self.disk_format)
            ET.SubElement(disk, "source", file=str(self.disk.resolve()))
            ET.SubElement(disk, "target", dev="vda", bus="virtio")
            if self.snapshot:
                ET.SubElement(disk, "transient")  # libvirt's throwaway overlay, like snapshot=on
        interface = ET.SubElement(devices, "interface", type="user")
        ET.SubElement(interface, "model", type="virtio")
        if self.ssh_port:
            forward = ET.SubElement(interface, "portForward", proto="tcp", address="127.0.0.1")
            ET.SubElement(forward, "range", start=str(self.ssh_port), to="22")
        ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(devices, "console", type="pty")
        if self.tdx:
            security = ET.SubElement(domain, "launchSecurity", type="tdx")
            ET.SubElement(security, "policy").text = TDX_POLICY
            socket = qgs_object_properties(self.qgs).get("quote-generation-socket")
            if socket:  # libvirt connects QGS over a UNIX socket only (its default path if none)
                qgs = ET.SubElement(security, "quoteGenerationSocket")
                if socket["type"] == "unix":
                    qgs.set("path", socket["path"])
        ET.indent(domain)
        return ET.tostring(domain, encoding="unicode") + "\n"


def is_tdvf(firmware: Path) -> bool:
    try:
        with open(firmware, "rb") as image:
            image.seek(max(0, firmware.stat().st_size - FIRMWARE_TABLE_BYTES))
            return TDVF_METADATA_GUID in image.read()
    except OSError:
        return False


def find_tdvf() -> Path | None:
    return next((path for path in TDVF_CANDIDATES if is_tdvf(path)), None)


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
        probe = Launch(disk=None, memory_mib=256, cpus=1, accel="kvm", serial=f"file:{console}")
        with running(probe.qemu_args(), output) as process:
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


def choose_accel(requested: str, tdx: bool) -> tuple[str, str]:
    """(accelerator, why auto fell back to software emulation or "")."""
    if tdx:
        if requested == "tcg":
            raise InputError("a TD cannot run under software emulation (--accel tcg)",
                             "use --accel kvm or auto with --tdx")
        return "kvm", ""
    if requested == "auto":
        reason = kvm_failure()
        return ("tcg", f"KVM unusable: {reason}") if reason else ("kvm", "")
    if requested == "kvm" and not os.path.exists(KVM_DEVICE):
        raise HostError(f"--accel kvm but {KVM_DEVICE} is absent", "use --accel auto or tcg")
    return requested, ""
