"""The QEMU command lines and libvirt domains, checked against what the projects document.

References (read through the search tools):
- QEMU docs/system/i386/tdx.rst, "Launching a TD": ``-accel kvm -cpu host -object
  tdx-guest,id=tdx0 -machine ...,confidential-guest-support=tdx0 -bios OVMF.fd``; TDVF is loaded
  with -bios because "TDX doesn't support readonly memslot" (no pflash); "kernel-irqchip must
  be split"; no SMM.
- canonical/tdx guest-tools/run_td: ``-machine q35,kernel_irqchip=split,
  confidential-guest-support=tdx``, ``-nodefaults -vga none``, virtio disk and network.
- libvirt tests/qemuxmlconfdata/launch-security-tdx.xml and the commit that introduced it
  ("conf: Add tdx as launch security type"): ``<launchSecurity type='tdx'>`` with optional
  ``<policy>`` (64-bit hex; bit 0 debug, bit 28 sept-ve-disable, QEMU's default 0x10000000),
  mrConfigId/mrOwner/mrOwnerConfig and quoteGenerationService. libvirt formatdomain: a loader
  of type 'rom' is passed as -bios, ``<ioapic driver='qemu'/>`` is the split I/O APIC.
- QEMU hw/i386/tdvf.c: TDVF is recognised by TDX_METADATA_OFFSET_GUID
  e47a6535-984a-4798-865e-4685a7bf8ec2 in the firmware's OVMF table.
"""

import json
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagebuilder import launch
from imagebuilder.errors import HostError, InputError
from imagebuilder.launch import Launch

TDVF = Path("/fw/tdvf.fd")


def option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == option]


def test_td_command_has_what_qemu_documents():
    args = Launch(disk=Path("/img/td.qcow2"), accel="kvm", tdx=True, tdvf=TDVF).qemu_args()

    assert option_values(args, "-accel") == ["kvm"]
    assert option_values(args, "-cpu") == ["host"]
    # QEMU docs/system/i386/tdx.rst and canonical/tdx run_td: the JSON form, with the QGS
    # attestation asks for quotes on the host's vsock CID 2, port 4050.
    assert [json.loads(value) for value in option_values(args, "-object")] == [
        {"qom-type": "tdx-guest", "id": "tdx0",
         "quote-generation-socket": {"type": "vsock", "cid": "2", "port": "4050"}}]
    machine = option_values(args, "-machine")[0].split(",")
    assert machine[0] == "q35"
    assert "kernel_irqchip=split" in machine
    assert "confidential-guest-support=tdx0" in machine  # the tdx-guest object's id
    assert option_values(args, "-bios") == [str(TDVF)]
    assert not any(value.startswith("if=pflash") for value in option_values(args, "-drive"))
    assert "-nodefaults" in args  # no legacy devices
    assert "file=/img/td.qcow2,if=virtio,format=qcow2" in option_values(args, "-drive")


def test_plain_uefi_command_maps_firmware_and_keeps_the_variable_store_clean():
    firmware = launch.Firmware(Path("/fw/CODE.fd"), Path("/fw/VARS.fd"))
    args = Launch(disk=Path("/img/vm.qcow2"), accel="tcg", serial="file:/logs/console",
                  firmware=firmware).qemu_args()

    drives = option_values(args, "-drive")
    assert "if=pflash,format=raw,readonly=on,file=/fw/CODE.fd" in drives
    assert "if=pflash,format=raw,snapshot=on,file=/fw/VARS.fd" in drives
    assert option_values(args, "-accel") == ["tcg"]
    assert "-cpu" not in args  # -cpu host exists only under KVM
    assert option_values(args, "-serial") == ["file:/logs/console"]
    assert "-no-reboot" in args and "-bios" not in args and "-object" not in args


def test_snapshot_leaves_the_disk_unwritten():
    args = Launch(disk=Path("/img/vm.raw"), disk_format="raw", accel="tcg", snapshot=True).qemu_args()
    assert "file=/img/vm.raw,if=virtio,format=raw,snapshot=on" in option_values(args, "-drive")


def test_firmware_only_launch_has_no_disk():
    args = Launch(disk=None, accel="kvm").qemu_args()
    assert not any("if=virtio" in value for value in option_values(args, "-drive"))


@pytest.mark.parametrize("accel, tdvf", [("tcg", TDVF), ("kvm", None)])
def test_a_td_needs_kvm_and_tdvf(accel, tdvf):
    with pytest.raises(InputError):
        Launch(disk=Path("/img/td.qcow2"), accel=accel, tdx=True, tdvf=tdvf)


def test_td_libvirt_domain_has_launch_security_tdx():
    domain = ET.fromstring(Launch(disk=Path("/img/td.qcow2"), accel="kvm", tdx=True, tdvf=TDVF,
                                  memory_mib=4096, cpus=4).libvirt_xml("td"))

    assert domain.get("type") == "kvm"
    security = domain.find("launchSecurity")
    assert security.get("type") == "tdx"
    assert security.findtext("policy") == "0x10000000"  # sept-ve-disable, as QEMU defaults
    loader = domain.find("os/loader")
    assert (loader.get("type"), loader.text) == ("rom", str(TDVF))
    assert domain.find("os/nvram") is None
    assert domain.find("os/type").get("machine") == "q35"
    assert domain.find("features/ioapic").get("driver") == "qemu"
    assert domain.find("cpu").get("mode") == "host-passthrough"
    assert (domain.findtext("memory"), domain.find("memory").get("unit"), domain.findtext("vcpu")) \
        == ("4096", "MiB", "4")
    disk = domain.find("devices/disk")
    assert disk.find("source").get("file") == "/img/td.qcow2"
    assert disk.find("target").get("bus") == "virtio"


def test_plain_libvirt_domain_lets_libvirt_pick_uefi_firmware():
    domain = ET.fromstring(Launch(disk=Path("/img/vm.qcow2"), accel="tcg").libvirt_xml("vm"))

    assert domain.get("type") == "qemu"
    assert domain.find("os").get("firmware") == "efi"
    assert domain.find("launchSecurity") is None
    assert domain.find("os/loader") is None


def firmware(tmp_path: Path, with_metadata: bool) -> Path:
    image = bytearray(64 * 1024)
    if with_metadata:
        guid = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
        image[-200:-200 + len(guid)] = guid
    path = tmp_path / "OVMF.fd"
    path.write_bytes(bytes(image))
    return path


def test_tdvf_is_recognised_by_its_tdx_metadata(tmp_path):
    assert launch.is_tdvf(firmware(tmp_path, with_metadata=True))
    assert not launch.is_tdvf(firmware(tmp_path, with_metadata=False))
    assert not launch.is_tdvf(tmp_path / "missing.fd")


def fake_host(monkeypatch, tmp_path, *, vendor="GenuineIntel", tdx="Y", qemu_tdx=True, tdvf=True):
    kvm = tmp_path / "kvm"
    kvm.touch()
    monkeypatch.setattr(launch, "KVM_DEVICE", str(kvm))
    monkeypatch.setattr(launch, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(launch, "kvm_tdx_enabled", lambda: tdx)
    monkeypatch.setattr(launch, "qemu_has_tdx_guest", lambda: qemu_tdx)
    monkeypatch.setattr(launch, "qemu_version", lambda: "7.2.22")
    found = firmware(tmp_path, with_metadata=True) if tdvf else None
    monkeypatch.setattr(launch, "find_tdvf", lambda: found)
    return found


def test_a_ready_tdx_host_has_no_problems(monkeypatch, tmp_path):
    found = fake_host(monkeypatch, tmp_path)
    assert launch.tdx_host_problems(None) == []
    assert launch.require_tdx_host(None) == found


def test_a_host_without_tdx_is_told_everything_it_lacks(monkeypatch, tmp_path):
    fake_host(monkeypatch, tmp_path, vendor="AuthenticAMD", tdx="", qemu_tdx=False, tdvf=False)

    with pytest.raises(HostError) as raised:
        launch.require_tdx_host(None)
    message = str(raised.value)
    assert "AuthenticAMD" in message
    assert "kvm_intel is not loaded" in message
    assert "QEMU 7.2.22 has no tdx-guest object" in message
    assert "no TDVF firmware" in message


def test_tdx_disabled_in_kvm_and_a_non_tdvf_firmware_are_named(monkeypatch, tmp_path):
    fake_host(monkeypatch, tmp_path, tdx="N")
    problems = launch.tdx_host_problems(firmware(tmp_path, with_metadata=False))
    assert problems == ["kvm_intel has tdx=N, needs tdx=Y (a TDX host kernel and BIOS)",
                        f"{tmp_path / 'OVMF.fd'} is not TDVF (no TDX metadata)"]


def test_host_facts_are_read_from_proc_and_sys(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme\n")
    parameter = tmp_path / "tdx"
    parameter.write_text("Y\n")
    assert launch.cpu_vendor(cpuinfo) == "GenuineIntel"
    assert launch.kvm_tdx_enabled(parameter) == "Y"
    assert launch.kvm_tdx_enabled(tmp_path / "absent") == ""


needs_qemu_img = pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-utils not installed")


@pytest.fixture
def small_image(tmp_path) -> Path:
    image = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    return image


@needs_qemu_img
def test_disk_format_is_read_from_the_image(small_image, tmp_path):
    assert launch.disk_format(small_image) == "qcow2"
    with pytest.raises(InputError):
        launch.disk_format(tmp_path / "missing.qcow2")


@needs_qemu_img
def test_run_prints_the_command_and_writes_the_libvirt_domain(small_image, tmp_path):
    xml = tmp_path / "domain.xml"
    result = CliRunner().invoke(launch.run_command,
                                [str(small_image), "--accel", "tcg", "--memory", "1024",
                                 "--libvirt-xml", str(xml)])

    assert result.exit_code == 0, result.output
    command = result.stdout.strip().split(" ")
    assert command[0] == "qemu-system-x86_64"
    assert option_values(command, "-m") == ["1024"]
    # Safe by default: QEMU writes to a throwaway overlay, libvirt's disk is transient.
    assert f"file={small_image},if=virtio,format=qcow2,snapshot=on" in option_values(command, "-drive")
    disk = ET.parse(xml).getroot().find("devices/disk")
    assert disk.find("source").get("file") == str(small_image)
    assert disk.find("transient") is not None


@needs_qemu_img
def test_run_tdx_exec_stops_before_qemu_on_a_host_without_tdx(small_image, tmp_path, monkeypatch):
    fake_host(monkeypatch, tmp_path, qemu_tdx=False)
    monkeypatch.setattr(launch.os, "execvp", lambda *args: pytest.fail("QEMU was started"))

    result = CliRunner().invoke(launch.run_command, [str(small_image), "--tdx", "--exec"])

    assert isinstance(result.exception, HostError)
    assert "no tdx-guest object" in str(result.exception)
