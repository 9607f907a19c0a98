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

from imagebuilder.host import os_release, requirements, runner, virt
from imagebuilder.commands import run
from imagebuilder.core.errors import HostError, InputError
from imagebuilder.vm.launch import Launch
from tests.conftest import FakeHost, firmware_volume
from tests.test_cloud_checks import fixed_vhd, gce_tar
from tests.test_uki_measure import volume

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
    firmware = virt.Firmware(Path("/fw/CODE.fd"), Path("/fw/VARS.fd"))
    args = Launch(disk=Path("/img/vm.qcow2"), accel="tcg", serial="file:/logs/console",
                  firmware=firmware).qemu_args()

    drives = option_values(args, "-drive")
    assert "if=pflash,format=raw,readonly=on,file=/fw/CODE.fd" in drives
    assert "if=pflash,format=raw,snapshot=on,file=/fw/VARS.fd" in drives
    assert option_values(args, "-accel") == ["tcg,thread=single"]
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
    image[:4096] = volume(b"")
    if with_metadata:
        guid = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
        image[-200:-200 + len(guid)] = guid
    path = tmp_path / "OVMF.fd"
    path.write_bytes(bytes(image))
    return path


def test_tdvf_is_recognised_by_its_tdx_metadata(tmp_path):
    assert virt.is_tdvf(firmware(tmp_path, with_metadata=True))
    assert not virt.is_tdvf(firmware(tmp_path, with_metadata=False))
    assert not virt.is_tdvf(tmp_path / "missing.fd")


def tdx_host(tmp_path, **facts) -> FakeHost:
    """A TDX host (KVM with tdx=Y, QEMU with tdx-guest, a TDVF) but for ``facts``."""
    found = firmware(tmp_path, with_metadata=True)
    return FakeHost(**{"kvm_tdx": "Y", "qemu_has_tdx_guest": True, "tdvf": found, **facts},
                    devices={virt.KVM_DEVICE})


def test_a_ready_tdx_host_has_no_problems(tmp_path):
    host = tdx_host(tmp_path)
    assert requirements.tdx_host_problems(None, host) == []
    assert requirements.require_tdx_host(None, host) == host.tdvf


def test_a_host_without_tdx_is_told_everything_it_lacks(tmp_path):
    host = tdx_host(tmp_path, cpu_vendor="AuthenticAMD", kvm_tdx="", qemu_has_tdx_guest=False, tdvf=None)

    with pytest.raises(HostError) as raised:
        requirements.require_tdx_host(None, host)
    message = str(raised.value)
    assert "AuthenticAMD" in message
    assert "kvm_intel is not loaded" in message
    assert "QEMU 7.2.22 has no tdx-guest object" in message
    assert "no TDVF firmware" in message
    assert host.firmware_install_hint() + ", a release with TDX support" in message


def test_tdx_disabled_in_kvm_and_a_non_tdvf_firmware_are_named(tmp_path):
    host = tdx_host(tmp_path, kvm_tdx="N")
    problems = requirements.tdx_host_problems(firmware(tmp_path, with_metadata=False), host)
    assert problems == ["kvm_intel has tdx=N, needs tdx=Y (a TDX host kernel and BIOS)",
                        f"{tmp_path / 'OVMF.fd'} is not TDVF (no TDX metadata)"]


def test_host_facts_are_read_from_proc_and_sys(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme\n")
    parameter = tmp_path / "tdx"
    parameter.write_text("Y\n")
    assert virt.cpu_vendor(cpuinfo) == "GenuineIntel"
    assert virt.kvm_tdx_enabled(parameter) == "Y"
    assert virt.kvm_tdx_enabled(tmp_path / "absent") == ""


needs_qemu_img = pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-utils not installed")


@pytest.fixture
def small_image(tmp_path) -> Path:
    image = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    return image


@needs_qemu_img
def test_disk_format_is_read_from_the_image(small_image, tmp_path):
    assert run.disk_format(small_image) == "qcow2"
    with pytest.raises(InputError):
        run.disk_format(tmp_path / "missing.qcow2")


@needs_qemu_img
def test_run_prints_the_command_and_writes_the_libvirt_domain(small_image, tmp_path):
    xml = tmp_path / "domain.xml"
    result = CliRunner().invoke(run.run_command,
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
    monkeypatch.setattr(runner, "replace_process", lambda *args: pytest.fail("QEMU was started"))

    result = CliRunner().invoke(run.run_command, [str(small_image), "--tdx", "--exec"],
                                obj=tdx_host(tmp_path, qemu_has_tdx_guest=False))

    assert isinstance(result.exception, HostError)
    assert "no tdx-guest object" in str(result.exception)


def test_ssh_port_forwards_loopback_to_the_guests_ssh_in_qemu_and_libvirt():
    vm = Launch(disk=Path("/img/vm.qcow2"), accel="tcg", ssh_port=2222, snapshot=True)

    assert option_values(vm.qemu_args(), "-netdev") == [
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]
    forward = ET.fromstring(vm.libvirt_xml("vm")).find("devices/interface/portForward")
    assert (forward.get("proto"), forward.get("address")) == ("tcp", "127.0.0.1")
    assert (forward.find("range").get("start"), forward.find("range").get("to")) == ("2222", "22")


@pytest.mark.parametrize("qgs, expected, libvirt_path", [
    ("vsock:2:4050", {"type": "vsock", "cid": "2", "port": "4050"}, None),
    ("unix:/var/run/tdx-qgs/qgs.socket", {"type": "unix", "path": "/var/run/tdx-qgs/qgs.socket"},
     "/var/run/tdx-qgs/qgs.socket"),
])
def test_the_quote_generation_socket_reaches_qemu_and_libvirt(qgs, expected, libvirt_path):
    td = Launch(disk=Path("/img/td.qcow2"), accel="kvm", tdx=True, tdvf=TDVF, qgs=qgs)

    tdx_object = json.loads(option_values(td.qemu_args(), "-object")[0])
    assert tdx_object["quote-generation-socket"] == expected
    socket = ET.fromstring(td.libvirt_xml("td")).find("launchSecurity/quoteGenerationSocket")
    assert socket is not None and socket.get("path") == libvirt_path


def test_a_td_without_qgs_has_no_socket_and_a_bad_address_is_refused():
    td = Launch(disk=Path("/img/td.qcow2"), accel="kvm", tdx=True, tdvf=TDVF, qgs=None)
    assert json.loads(option_values(td.qemu_args(), "-object")[0]) == {"qom-type": "tdx-guest",
                                                                      "id": "tdx0"}
    assert ET.fromstring(td.libvirt_xml("td")).find("launchSecurity/quoteGenerationSocket") is None
    with pytest.raises(InputError, match="not vsock:CID:PORT or unix:/PATH"):
        Launch(disk=Path("/img/td.qcow2"), accel="kvm", tdx=True, tdvf=TDVF, qgs="tcp:4050")


def test_a_unified_firmware_image_is_one_throwaway_pflash(tmp_path):
    unified = firmware_volume(tmp_path / "OVMF.fd")
    firmware = virt.firmware_for(unified)
    assert firmware == virt.Firmware(unified, None)
    args = Launch(disk=Path("/img/vm.qcow2"), accel="tcg", firmware=firmware).qemu_args()
    assert [d for d in option_values(args, "-drive") if "pflash" in d] == [
        f"if=pflash,format=raw,snapshot=on,file={unified}"]
    with pytest.raises(InputError, match="does not exist"):
        virt.firmware_for(tmp_path / "missing.fd")
    with pytest.raises(InputError, match="is not UEFI firmware"):  # issue 20: it ran to the timeout
        virt.firmware_for(Path("/etc/hostname"))


def test_firmware_is_found_where_the_distributions_put_it(tmp_path, monkeypatch):
    pairs = [(tmp_path / f"{name}_CODE.fd", tmp_path / f"{name}_VARS.fd") for name in ("deb", "suse")]
    monkeypatch.setattr(virt, "OVMF_CANDIDATES", tuple(pairs))
    firmware_volume(pairs[1][0])
    firmware_volume(pairs[1][1])
    assert virt.find_ovmf() == virt.Firmware(*pairs[1])  # the first complete pair
    assert virt.firmware_for(pairs[1][0]) == virt.Firmware(*pairs[1])  # its own variables
    pairs[1][1].unlink()
    with pytest.raises(HostError, match="no UEFI firmware") as raised:
        requirements.require_ovmf(None, FakeHost(ovmf=virt.find_ovmf(), family="suse"))
    assert raised.value.hint.startswith("zypper install qemu-ovmf-x86_64")


@pytest.mark.parametrize("text, family", [
    ('ID=debian\nVERSION_ID="12"\n', "debian"),
    ('ID=ubuntu\nID_LIKE=debian\n', "debian"),
    ('ID=fedora\n', "fedora"),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "fedora"),
    ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "suse"),
    ('ID="sles"\nID_LIKE="suse"\n', "suse"),
    ('ID=arch\n', None),
])
def test_the_hosts_distribution_family_comes_from_os_release(tmp_path, text, family):
    path = tmp_path / "os-release"
    path.write_text(text)
    assert os_release.host_family(path) == family


def test_an_unknown_distribution_gets_every_install_hint():
    hint = FakeHost(family=None).firmware_install_hint()
    assert all(command in hint for command in virt.FIRMWARE_INSTALL.values())


@needs_qemu_img
def test_run_persistent_writes_the_image_and_takes_the_launch_options(small_image, tmp_path,
                                                                      monkeypatch):
    code, variables = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    firmware_volume(code)
    firmware_volume(variables)
    monkeypatch.setattr(virt, "OVMF_CANDIDATES", ((code, variables),))
    result = CliRunner().invoke(run.run_command,
                                [str(small_image), "--accel", "tcg", "--persistent", "--cpus", "3",
                                 "--memory", "1536", "--ssh-port", "2022", "--firmware", str(code)])

    assert result.exit_code == 0, result.output
    command = result.stdout.strip().split(" ")
    assert f"file={small_image},if=virtio,format=qcow2" in option_values(command, "-drive")
    assert (option_values(command, "-smp"), option_values(command, "-m")) == (["3"], ["1536"])
    assert f"if=pflash,format=raw,snapshot=on,file={variables}" in option_values(command, "-drive")
    assert option_values(command, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:2022-:22"]


def test_a_firmware_only_libvirt_domain_has_no_disk():
    domain = ET.fromstring(Launch(disk=None, accel="tcg").libvirt_xml("firmware"))
    assert domain.find("devices/disk") is None
    assert domain.find("devices/interface") is not None


def test_a_secure_boot_firmware_gets_smm_and_a_secure_flash(tmp_path):
    firmware = virt.Firmware(tmp_path / "OVMF_CODE_4M.ms.fd", tmp_path / "OVMF_VARS_4M.ms.fd",
                             secure_boot=True)

    args = Launch(disk=tmp_path / "vm.qcow2", accel="tcg", firmware=firmware).qemu_args()

    machine = args[args.index("-machine") + 1]
    assert machine == "q35,smm=on"  # edk2 keeps a Secure Boot build's variables behind SMM
    assert args[args.index("-global") + 1] == "driver=cfi.pflash01,property=secure,value=on"
    assert f"if=pflash,format=raw,readonly=on,file={firmware.code}" in args


def test_secure_boot_without_its_firmware_names_the_package(tmp_path):
    with pytest.raises(HostError, match="no Secure Boot OVMF.*apt-get install ovmf"):
        requirements.require_ovmf(None, FakeHost(ovmf=virt.Firmware(tmp_path / "c.fd")), True)
    with pytest.raises(InputError, match="--secure-boot chooses the firmware itself"):
        requirements.require_ovmf(tmp_path / "c.fd", FakeHost(), True)


def test_an_nvme_disk_is_a_namespace_of_an_emulated_nvme_controller():
    """QEMU docs/system/devices/nvme.rst: -drive if=none + -device nvme,serial=,drive=; libvirt:
    a disk on target bus nvme with a serial."""
    vm = Launch(disk=Path("/img/gce.raw"), disk_format="raw", accel="tcg", snapshot=True,
                disk_interface="nvme")
    args = vm.qemu_args()
    assert "file=/img/gce.raw,if=none,id=disk0,format=raw,snapshot=on" in option_values(args, "-drive")
    assert option_values(args, "-device")[0] == "nvme,serial=tdx-image-disk0,drive=disk0"
    disk = ET.fromstring(vm.libvirt_xml("vm")).find("devices/disk")
    assert disk.find("target").attrib == {"dev": "nvme0n1", "bus": "nvme"}
    assert disk.findtext("serial") == "tdx-image-disk0"


def test_a_disk_interface_qemu_cannot_attach_is_refused():
    with pytest.raises(InputError, match="cannot attach the disk over vmbus"):
        Launch(disk=Path("/img/azure.vhd"), accel="tcg", disk_interface="vmbus")


def test_run_takes_a_fixed_vhd_in_place_and_sends_a_gce_tar_to_boot(synthetic_image, tmp_path):
    vhd, tar = fixed_vhd(synthetic_image, tmp_path), gce_tar(synthetic_image, tmp_path)
    ran = CliRunner().invoke(run.run_command, [str(vhd), "--accel", "tcg"], obj=FakeHost())
    assert f"file={vhd.resolve()},if=virtio,format=vpc,snapshot=on" in option_values(ran.stdout.split(), "-drive")
    refused = CliRunner().invoke(run.run_command, [str(tar), "--accel", "tcg"], obj=FakeHost())
    assert isinstance(refused.exception, InputError) and "boot --cloud gcp" in refused.exception.hint
