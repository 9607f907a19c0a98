"""How a guest image is launched: the QEMU command line and the equivalent libvirt domain, for a
plain UEFI VM and for an Intel TDX trust domain (TD), and which accelerator to use.  The host
facts a launch depends on (firmware, KVM, QEMU's TDX support) are host/virt.py's.

The TD launch follows QEMU's docs/system/i386/tdx.rst (tdx-guest object, split kernel irqchip,
confidential-guest-support, firmware via -bios because a TD has no read-only memory for pflash)
and libvirt's ``<launchSecurity type='tdx'>``; tests/test_launch.py cites what each part is
checked against.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import HostError, InputError
from ..host import virt
from ..host.facts import HostFacts

# The Quote Generation Service (QGS) a TD asks for its attestation quotes: QEMU's tdx-guest
# property quote-generation-socket (docs/system/i386/tdx.rst), by default on the host's vsock
# CID 2, port 4050, as Intel's QGS listens (canonical/tdx run_td passes the same).
DEFAULT_QGS = "vsock:2:4050"
TDX_OBJECT_ID = "tdx0"
# TD attribute bit 28, SEPT_VE_DISABLE: Linux TD guests refuse to boot without it. It is the
# default of QEMU's tdx-guest object and the value libvirt documents for <policy>.
TDX_POLICY = "0x10000000"
# How the boot disk is attached: virtio-blk (QEMU/KVM, today's images) or an emulated NVMe
# controller whose namespace is the disk, as Google Cloud's Confidential VMs attach theirs.
DISK_INTERFACES = ("virtio", "nvme")
NVME_DRIVE_ID = "disk0"
NVME_SERIAL = "tdx-image-disk0"  # QEMU's nvme device requires a serial number


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

    disk: Path | None  # None: the firmware alone
    disk_format: str = "qcow2"
    memory_mib: int = 2048
    cpus: int = 2
    accel: str = "kvm"
    tdx: bool = False
    tdvf: Path | None = None  # the firmware of a TD; plain VMs use OVMF_CODE/OVMF_VARS
    firmware: virt.Firmware | None = None  # a plain VM's; None: the host's OVMF (else Debian's paths)
    serial: str = "mon:stdio"  # QEMU -serial backend: the console, or file:LOG for a boot test
    # A second serial port (the guest's ttyS1) written to this file: the self-check's channel
    # for the firmware's event log, apart from the console that kernel messages cut into.
    channel: Path | None = None
    snapshot: bool = False  # write to a temporary layer instead of the disk
    # A software TPM 2.0 (swtpm's control socket) on tpm-tis: the reference VM for measured
    # boot, which also has no NIC, so the image is the only boot device.
    tpm_socket: Path | None = None
    ssh_port: int | None = None  # forward 127.0.0.1:PORT on the host to the guest's port 22
    qgs: str | None = DEFAULT_QGS  # a TD's Quote Generation Service; None: no attestation
    disk_interface: str = "virtio"  # one of DISK_INTERFACES

    def __post_init__(self):
        if self.disk_interface not in DISK_INTERFACES:
            raise InputError(f"QEMU cannot attach the disk over {self.disk_interface}",
                             f"attach it as one of: {', '.join(DISK_INTERFACES)}")
        if self.tdx and (self.accel != "kvm" or self.tdvf is None):
            raise InputError("a TD needs --accel kvm and TDVF firmware",
                             "drop --accel tcg, or pass --firmware FILE")
        if self.tdx:
            qgs_object_properties(self.qgs)  # refuse a malformed address before anything runs

    def qemu_args(self) -> list[str]:
        # -nodefaults: no legacy devices (a TD has no emulated VGA, IDE or floppy);
        # -no-reboot: a guest reset ends QEMU (TDs cannot be reset; a boot test must not loop).
        # Under TCG one host thread emulates the vCPUs in turn: with QEMU 7.2's multi-threaded
        # TCG a vCPU ran kernel text another vCPU had just patched back from int3 (seen in CI:
        # "Oops: int3" at a static-key site of 6.12, a panic 2 s into a boot), most likely a
        # stale translation.  Boots take ~15% longer (40 s -> 47 s measured on debian 13).
        accel = f"{self.accel},thread=single" if self.accel == "tcg" else self.accel
        args = [virt.QEMU, "-accel", accel, "-m", str(self.memory_mib), "-smp", str(self.cpus),
                "-nodefaults", "-display", "none", "-no-reboot", "-serial", self.serial]
        if self.channel is not None:
            args += ["-serial", f"file:{self.channel}"]
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
            firmware = self.firmware or virt.find_ovmf() or virt.Firmware(virt.OVMF_CODE, virt.OVMF_VARS)
            args += [*firmware.machine_args(), *firmware.pflash_drives()]
        if self.tpm_socket is not None:
            args += ["-chardev", f"socket,id=chrtpm,path={self.tpm_socket}",
                     "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
        if self.disk is not None:
            attach = f"if=none,id={NVME_DRIVE_ID}" if self.disk_interface == "nvme" else "if=virtio"
            disk = f"file={self.disk},{attach},format={self.disk_format}"
            args += ["-drive", disk + (",snapshot=on" if self.snapshot else "")]
            if self.disk_interface == "nvme":  # QEMU docs/system/devices/nvme.rst
                args += ["-device", f"nvme,serial={NVME_SERIAL},drive={NVME_DRIVE_ID}"]
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
            if self.disk_interface == "nvme":
                # libvirt's NVMe disk bus (recent releases; no libvirt on this host to try it)
                ET.SubElement(disk, "target", dev="nvme0n1", bus="nvme")
                ET.SubElement(disk, "serial").text = NVME_SERIAL
            else:
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


def choose_accel(requested: str, tdx: bool, host: HostFacts) -> tuple[str, str]:
    """(accelerator, why auto fell back to software emulation or "")."""
    if tdx:
        if requested == "tcg":
            raise InputError("a TD cannot run under software emulation (--accel tcg)",
                             "use --accel kvm or auto with --tdx")
        return "kvm", ""
    if requested == "auto":
        reason = host.kvm_failure
        return ("tcg", f"KVM unusable: {reason}") if reason else ("kvm", "")
    if requested == "kvm" and not host.has_device(virt.KVM_DEVICE):
        raise HostError(f"--accel kvm but {virt.KVM_DEVICE} is absent", "use --accel auto or tcg")
    return requested, ""
