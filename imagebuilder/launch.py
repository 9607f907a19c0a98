"""How a guest image is launched: the QEMU command line and the equivalent libvirt domain, for a
plain UEFI VM and for an Intel TDX trust domain (TD), and what a host lacks to run a TD.

The TD launch follows QEMU's docs/system/i386/tdx.rst (tdx-guest object, split kernel irqchip,
confidential-guest-support, firmware via -bios because a TD has no read-only memory for pflash)
and libvirt's ``<launchSecurity type='tdx'>``; tests/test_launch.py cites what each part is
checked against.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import click

from .errors import HostError, InputError
from .inputs import require_writable_file, write_text
# qcow2 or raw for a readable image; a truncated qcow2 or a text file is an InputError.
from .validate.disk import image_format as disk_format

QEMU = "qemu-system-x86_64"
# Debian's ovmf package: the code is mapped read-only, the variable store template is used
# through snapshot=on so every launch starts from a clean store and nothing is written back.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Where distributions install a TDX-capable OVMF (TDVF): Debian/Ubuntu's unified OVMF.fd (what
# canonical/tdx run_td passes), Fedora/CentOS, SUSE's TDX demo.
TDVF_CANDIDATES = (
    Path("/usr/share/ovmf/OVMF.fd"),
    Path("/usr/share/edk2/ovmf/OVMF.inteltdx.fd"),
    Path("/usr/share/qemu/tdvf-x86_64.bin"),
)
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
    serial: str = "mon:stdio"  # QEMU -serial backend: the console, or file:LOG for a boot test
    snapshot: bool = False  # write to a temporary layer instead of the disk
    # A software TPM 2.0 (swtpm's control socket) on tpm-tis: the reference VM for measured
    # boot, which also has no NIC, so the image is the only boot device.
    tpm_socket: Path | None = None

    def __post_init__(self):
        if self.tdx and (self.accel != "kvm" or self.tdvf is None):
            raise InputError("a TD needs --accel kvm and TDVF firmware",
                             "drop --accel tcg, or pass --tdvf FILE")

    def qemu_args(self) -> list[str]:
        # -nodefaults: no legacy devices (a TD has no emulated VGA, IDE or floppy);
        # -no-reboot: a guest reset ends QEMU (TDs cannot be reset; a boot test must not loop).
        args = [QEMU, "-accel", self.accel, "-m", str(self.memory_mib), "-smp", str(self.cpus),
                "-nodefaults", "-display", "none", "-no-reboot", "-serial", self.serial]
        if self.accel == "kvm":
            args += ["-cpu", "host"]
        if self.tdx:
            args += ["-machine",
                     f"q35,kernel_irqchip=split,confidential-guest-support={TDX_OBJECT_ID}",
                     "-object", f"tdx-guest,id={TDX_OBJECT_ID}",
                     "-bios", str(self.tdvf)]
        else:
            args += ["-machine", "q35",
                     "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,snapshot=on,file={OVMF_VARS}"]
        if self.tpm_socket is not None:
            args += ["-chardev", f"socket,id=chrtpm,path={self.tpm_socket}",
                     "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
        if self.disk is not None:
            disk = f"file={self.disk},if=virtio,format={self.disk_format}"
            args += ["-drive", disk + (",snapshot=on" if self.snapshot else "")]
            if self.tpm_socket is None:
                args += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
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
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type=self.disk_format)
        ET.SubElement(disk, "source", file=str(Path(self.disk).resolve()))
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
        interface = ET.SubElement(devices, "interface", type="user")
        ET.SubElement(interface, "model", type="virtio")
        ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(devices, "console", type="pty")
        if self.tdx:
            security = ET.SubElement(domain, "launchSecurity", type="tdx")
            ET.SubElement(security, "policy").text = TDX_POLICY
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
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else ""


def qemu_has_tdx_guest() -> bool:
    try:
        out = subprocess.run([QEMU, "-object", "help"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "tdx-guest" in out.split()


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


def tdx_host_problems(tdvf: Path | None) -> list[str]:
    """What this host lacks to launch a TD with ``tdvf`` (None: search the usual paths)."""
    problems = []
    vendor = cpu_vendor()
    if vendor != "GenuineIntel":
        problems.append(f"the CPU is {vendor}, TDX needs an Intel Xeon with TDX")
    tdx = kvm_tdx_enabled()
    if not tdx:
        problems.append("kvm_intel is not loaded (no /sys/module/kvm_intel/parameters/tdx)")
    elif tdx != "Y":
        problems.append(f"kvm_intel has tdx={tdx}, needs tdx=Y (a TDX host kernel and BIOS)")
    if not os.path.exists(KVM_DEVICE):
        problems.append(f"{KVM_DEVICE} is missing")
    if not qemu_has_tdx_guest():
        version = qemu_version()
        problems.append(f"QEMU {version} has no tdx-guest object (needs QEMU >= 10.1)" if version
                        else f"{QEMU} is not installed")
    if tdvf is None:
        if find_tdvf() is None:
            problems.append("no TDVF firmware in " + ", ".join(map(str, TDVF_CANDIDATES)))
    elif not is_tdvf(tdvf):
        problems.append(f"{tdvf} is not TDVF (no TDX metadata)")
    return problems


def require_tdx_host(tdvf: Path | None) -> Path:
    """The TDVF to launch with, or a HostError naming everything the host lacks."""
    problems = tdx_host_problems(tdvf)
    if problems:
        raise HostError("this host cannot run a TD: " + "; ".join(problems),
                        "run tdx-image doctor on a TDX host")
    return tdvf or find_tdvf()


@click.command("run")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--tdx", is_flag=True, help="Launch as an Intel TDX trust domain.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="auto: KVM where it works, else software emulation.")
@click.option("--memory", "memory_mib", type=click.IntRange(256), default=2048,
              show_default=True, help="Guest memory in MiB.")
@click.option("--cpus", type=click.IntRange(1), default=2, show_default=True)
@click.option("--tdvf", type=click.Path(path_type=Path), help="TDVF firmware for --tdx.")
@click.option("--snapshot", is_flag=True, help="Leave the image unchanged (writes are discarded).")
@click.option("--libvirt-xml", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the equivalent libvirt domain XML to this file.")
@click.option("--exec", "execute", is_flag=True, help="Run QEMU instead of printing its command.")
@click.option("--json", "as_json", is_flag=True, help="Print the QEMU command as JSON.")
def run_command(image, tdx, accel, memory_mib, cpus, tdvf, snapshot, libvirt_xml, execute, as_json):
    """Print (or run with --exec) the QEMU command that launches IMAGE.

    The serial console is on the terminal (Ctrl-A X quits QEMU); a guest reboot ends QEMU.
    """
    from .boot import choose_accel  # here, not at the top: boot builds on this module

    if libvirt_xml:
        require_writable_file(libvirt_xml, "--libvirt-xml")
    if tdx and execute:
        tdvf = require_tdx_host(tdvf)
    elif tdx:
        # Printing is also for copying the command to a TDX host: say what this one lacks.
        for problem in tdx_host_problems(tdvf):
            click.echo(f"note: this host cannot run it: {problem}", err=True)
        tdvf = tdvf or find_tdvf() or TDVF_CANDIDATES[0]
    launch = Launch(disk=image.resolve(), disk_format=disk_format(image), memory_mib=memory_mib,
                    cpus=cpus, accel=choose_accel(accel, tdx)[0], tdx=tdx, tdvf=tdvf,
                    snapshot=snapshot)
    if libvirt_xml:
        write_text(libvirt_xml, launch.libvirt_xml(name=f"tdx-image-{image.stem}"), "--libvirt-xml")
        click.echo(f"libvirt domain written to {libvirt_xml}", err=True)
    args = launch.qemu_args()
    if execute:
        os.execvp(args[0], args)
    click.echo(json.dumps({"ok": True, "command": args}, indent=2) if as_json else shlex.join(args))
