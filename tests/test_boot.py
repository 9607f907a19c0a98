"""The boot test's logic: self-check parsing, the accelerator decision, failure reasons, and that
QEMU never outlives a boot. QEMU is replaced by a script that behaves as the real one did here
(writes the serial console file, prints "KVM internal error" and stays paused, or exits)."""

import base64
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagebuilder.host import virt
from imagebuilder.commands import boot as boot_verb
from imagebuilder.vm import boot, launch
from imagebuilder.core.errors import CheckFailed, HostError, InputError, Interrupted
from imagebuilder.distros.clouds import GCP
from tests.conftest import FakeHost, firmware_volume, schema_errors
from tests.test_cloud_checks import fixed_vhd, gce_tar
from tests.test_measure import synthetic_log
from tests.test_verify import ccel as generated_ccel

# The line as the real debian image printed it, with systemd's colour codes around it.
REAL_LINE = (
    '[   25.570594] \x1b[0;1;39mtdx-selfcheck\x1b[0m[450]: TDX-SELFCHECK {"version":1,"td":false,'
    '"attestation":false,"kernel":"6.12.117+deb12-amd64","config_intel_tdx_guest":"y",'
    '"cpuinfo_flag":false,"dmesg_guest_detected":false,"device":false,"tsm_provider":"",'
    '"reason":"not a TD: no tdx_guest CPU flag (the VM was not launched as a trust domain)"}\r\n'
)
TD_LINE = 'TDX-SELFCHECK {"version":1,"td":true,"attestation":true,"kernel":"6.12","reason":"running as a TD"}\n'
UEFI_SHELL = ('BdsDxe: loading Boot0001 "EFI Internal Shell"\r\n\x1b[0mUEFI Interactive Shell v2.2\r\n'
              "map: No mapping found.\r\nShell> ")

FAKE_QEMU = r"""#!/bin/bash
case "$1" in
    --version) echo "QEMU emulator version 7.2.22"; exit 0 ;;
    -object) echo "List of user creatable objects: sev-guest"; exit 0 ;;
esac
echo $$ > "$FAKE_QEMU_PID"
printf '%s\n' "$@" > "$FAKE_QEMU_PID.args"
previous="" serial="" channel=""
for argument in "$@"; do  # the first serial port is the console, a second the self-check's channel
    if [ "$previous" = -serial ]; then
        if [ -z "$serial" ]; then serial="${argument#file:}"; else channel="${argument#file:}"; fi
    fi
    previous="$argument"
done
[ -f "$FAKE_QEMU_CHANNEL" ] && [ -n "$channel" ] && cat "$FAKE_QEMU_CHANNEL" > "$channel"
[ -f "$FAKE_QEMU_CONSOLE" ] && cat "$FAKE_QEMU_CONSOLE" > "$serial"
[ -f "$FAKE_QEMU_STDERR" ] && cat "$FAKE_QEMU_STDERR" >&2
[ -n "$FAKE_QEMU_EXIT" ] && exit "$FAKE_QEMU_EXIT"
[ -n "$FAKE_QEMU_SIGNAL" ] && { sleep 0.5; kill -"$FAKE_QEMU_SIGNAL" "$PPID"; }
exec sleep 60
"""


class FakeQemu:
    def __init__(self, directory: Path, monkeypatch):
        self.directory, self.monkeypatch = directory, monkeypatch
        self.pid_file = directory / "pid"
        monkeypatch.setenv("FAKE_QEMU_PID", str(self.pid_file))

    def behave(self, console: str = "", stderr: str = "", exit_status: int | None = None,
               signal_parent: str = "", channel: str = ""):
        for name, text in (("CONSOLE", console), ("STDERR", stderr), ("CHANNEL", channel)):
            path = self.directory / name.lower()
            path.write_text(text)
            self.monkeypatch.setenv(f"FAKE_QEMU_{name}", str(path))
        self.monkeypatch.setenv("FAKE_QEMU_EXIT", "" if exit_status is None else str(exit_status))
        self.monkeypatch.setenv("FAKE_QEMU_SIGNAL", signal_parent)

    @property
    def started(self) -> bool:
        return self.pid_file.exists()

    def assert_gone(self):
        """The fake QEMU was started and no longer exists (killed and reaped, not a zombie)."""
        pid = int(self.pid_file.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture
def qemu(tmp_path, monkeypatch) -> FakeQemu:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "qemu-system-x86_64"
    script.write_text(FAKE_QEMU)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    firmware = (tmp_path / "OVMF_CODE.fd", tmp_path / "OVMF_VARS.fd")
    for path in firmware:
        firmware_volume(path)
    monkeypatch.setattr(virt, "OVMF_CANDIDATES", (firmware,))
    kvm = tmp_path / "kvm"
    kvm.touch()
    monkeypatch.setattr(virt, "KVM_DEVICE", str(kvm))
    monkeypatch.setattr(boot, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(virt, "POLL_SECONDS", 0.05)
    return FakeQemu(tmp_path, monkeypatch)


@pytest.fixture
def image(tmp_path) -> Path:
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-utils not installed")
    path = tmp_path / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


def test_the_real_console_line_is_parsed():
    console = "Welcome to GRUB!\r\n\x1b[0;32m  OK  \x1b[0m] Started ssh.\r\n" + REAL_LINE + "login: "
    selfcheck = boot.parse_selfcheck(console)
    assert selfcheck["td"] is False
    assert selfcheck["kernel"] == "6.12.117+deb12-amd64"
    assert selfcheck["reason"].startswith("not a TD: no tdx_guest CPU flag")


@pytest.mark.parametrize("console", ["", "booting...\n", REAL_LINE[:120],
                                     "tdx-selfcheck: TDX-SELFCHECK not json\n"])
def test_no_complete_line_is_no_result_yet(console):
    assert boot.parse_selfcheck(console) is None


def test_a_broken_mention_before_the_line_is_skipped():
    assert boot.parse_selfcheck("TDX-SELFCHECK {oops\n" + TD_LINE)["td"] is True


# The first line is what OVMF printed here for the debian image with its ESP emptied.
DISK_NOT_BOOTABLE = ('BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0)'
                     ": Not Found\r\n\r\niPXE 1.0.0 -- Open Source Network Boot Firmware\r\n")


# What OVMF printed here for an NVMe disk (boot --cloud gcp) whose ESP has no loader.
NVME_NOT_BOOTABLE = ('BdsDxe: failed to load Boot0001 "UEFI QEMU NVMe Ctrl tdx-image-disk0 1" from '
                     "PciRoot(0x0)/Pci(0x1,0x0)/NVMe(0x1,00-00-00-00-00-00-00-00): Not Found\r\n")


@pytest.mark.parametrize("console, expected, final", [
    (DISK_NOT_BOOTABLE, "no EFI boot loader on the disk", True),
    (NVME_NOT_BOOTABLE, "no EFI boot loader on the disk", True),
    (UEFI_SHELL, "started its shell", True),
    ("Welcome to GRUB!\ngrub rescue> ", "rescue prompt", True),
    ("[ 3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n", "kernel panicked", True),
    ("Debian GNU/Linux 12 tdx ttyS0\n\ntdx login: ", "login prompt without a self-check", False),
    ("", "stayed empty", False),
    ("random output\n", "no known failure", False),
])
def test_a_stuck_console_is_diagnosed(console, expected, final):
    reason, is_final = boot.diagnose(console)
    assert expected in reason and is_final == final


def test_auto_falls_back_to_software_emulation_when_kvm_fails():
    host = FakeHost(kvm_failure="QEMU stops with 'KVM internal error'")
    assert launch.choose_accel("auto", False, host) == ("tcg", "KVM unusable: QEMU stops with 'KVM internal error'")


def test_auto_uses_kvm_when_it_works():
    assert launch.choose_accel("auto", False, FakeHost(kvm_failure=None)) == ("kvm", "")


class NoProbeHost(FakeHost):
    @property
    def kvm_failure(self):
        pytest.fail("a TD must not probe for a fallback")


def test_a_td_always_uses_kvm_and_refuses_software_emulation():
    assert launch.choose_accel("auto", True, NoProbeHost()) == ("kvm", "")
    with pytest.raises(InputError):
        launch.choose_accel("tcg", True, NoProbeHost())


def test_explicit_kvm_without_the_device_is_a_host_error(monkeypatch, tmp_path):
    with pytest.raises(HostError):
        launch.choose_accel("kvm", False, FakeHost(devices=()))
    monkeypatch.setattr(virt, "KVM_DEVICE", str(tmp_path / "absent"))
    assert virt.kvm_failure() == f"{tmp_path / 'absent'} is absent"


def test_kvm_probe_sees_the_internal_error_and_stops_qemu(qemu):
    qemu.behave(stderr="KVM internal error. Suberror: 1\nextra data[0]: 0x1\nemulation failure\n")
    assert virt.kvm_failure() == "QEMU stops with 'KVM internal error. Suberror: 1' (emulation failure)"
    qemu.assert_gone()


def test_kvm_probe_accepts_firmware_that_reaches_its_boot_manager(qemu):
    qemu.behave(console='BdsDxe: loading Boot0001 "EFI Internal Shell"\r\n')
    assert virt.kvm_failure() is None
    qemu.assert_gone()


def test_boot_reports_the_selfcheck(qemu, image, tmp_path):
    qemu.behave(console="Welcome to GRUB!\n" + REAL_LINE)
    log = tmp_path / "logs" / "console.log"

    result = boot.boot_image(image, accel="tcg", timeout=30, console_log=log)

    assert result.to_dict()["selfcheck"]["td"] is False
    assert result.to_dict()["accel"] == "tcg"
    assert result.to_dict()["console_log"] == str(log)
    assert "TDX-SELFCHECK" in log.read_text()
    qemu.assert_gone()


def test_a_disk_the_firmware_cannot_boot_fails_at_once_with_the_reason(qemu, image, tmp_path):
    qemu.behave(console=DISK_NOT_BOOTABLE)

    with pytest.raises(CheckFailed) as raised:
        boot.boot_image(image, accel="tcg", timeout=300, console_log=tmp_path / "console.log")

    message = str(raised.value)
    assert "the boot stopped after" in message
    assert "no EFI boot loader on the disk" in message
    assert "last console lines: " in message and "iPXE" in message
    qemu.assert_gone()


def test_a_guest_that_never_prints_the_line_times_out(qemu, image, tmp_path):
    qemu.behave(console="Welcome to GRUB!\n")

    with pytest.raises(CheckFailed) as raised:
        boot.boot_image(image, accel="tcg", timeout=1, console_log=tmp_path / "console.log")

    message = str(raised.value)
    assert "no self-check line within 1 s under tcg" in message
    assert "last console lines: Welcome to GRUB!" in message
    qemu.assert_gone()


def test_qemu_exiting_early_fails_with_what_qemu_said(qemu, image, tmp_path):
    qemu.behave(stderr="qemu-system-x86_64: -drive file=x: Could not open\n", exit_status=1)

    with pytest.raises(CheckFailed) as raised:
        boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "console.log")

    assert "QEMU exited with status 1" in str(raised.value)
    assert "QEMU: qemu-system-x86_64: -drive file=x: Could not open" in str(raised.value)


def test_kvm_failing_during_the_boot_is_a_host_error(qemu, image, tmp_path):
    qemu.behave(stderr="KVM internal error. Suberror: 1\n")
    with pytest.raises(HostError):
        boot.boot_image(image, accel="kvm", timeout=30, console_log=tmp_path / "console.log")
    qemu.assert_gone()


@pytest.mark.parametrize("signal_name", ["INT", "TERM"])
def test_ctrl_c_or_sigterm_stops_qemu(qemu, image, tmp_path, signal_name):
    qemu.behave(signal_parent=signal_name)
    with pytest.raises(Interrupted):
        boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "console.log")
    qemu.assert_gone()


def running(pid: int) -> bool:
    """Neither gone nor a zombie (an orphan's zombie waits for whichever init adopts it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_qemu_dies_with_a_killed_boot(qemu, image, tmp_path):
    qemu.behave()
    runner = subprocess.Popen([sys.executable, "-c",
                               "import sys; from pathlib import Path; from imagebuilder.vm import boot; "
                               "boot.boot_image(Path(sys.argv[1]), accel='tcg', console_log=Path(sys.argv[2]))",
                               str(image), str(tmp_path / "console.log")],
                              env={**os.environ, "TMPDIR": str(tmp_path)})  # SIGKILL leaves its work directory
    try:
        for _ in range(200):  # until the fake QEMU has started
            if qemu.started or runner.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"])
        assert qemu.started, "the boot ended before QEMU started"
        runner.kill()  # SIGKILL: no finally block runs
    finally:
        runner.wait()
    pid = int(qemu.pid_file.read_text())
    for _ in range(100):  # the kernel delivers the parent-death signal
        if not running(pid):
            return
        subprocess.run(["sleep", "0.05"])
    pytest.fail(f"QEMU {pid} outlived its killed parent")


def test_the_image_is_never_written(qemu, image, tmp_path):
    before = image.read_bytes()
    qemu.behave(console=REAL_LINE)
    boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "console.log")
    assert image.read_bytes() == before


def td_host(tmp_path, **facts) -> FakeHost:
    return FakeHost(**{"kvm_tdx": "Y", "qemu_has_tdx_guest": True, "tdvf": tmp_path / "tdvf.fd",
                       **facts}, devices={virt.KVM_DEVICE})


def test_tdx_on_a_host_that_cannot_stops_before_qemu(qemu, image, tmp_path):
    host = td_host(tmp_path, qemu_has_tdx_guest=False, cpu_vendor="AuthenticAMD")
    with pytest.raises(HostError) as raised:
        boot.boot_image(image, tdx=True, console_log=tmp_path / "console.log", host=host)

    assert "cannot run a TD" in str(raised.value) and "AuthenticAMD" in str(raised.value)
    assert not qemu.started


def test_tdx_passes_only_when_the_guest_says_it_is_a_td(qemu, image, tmp_path):
    qemu.behave(console=REAL_LINE)
    with pytest.raises(CheckFailed) as raised:
        boot.boot_image(image, tdx=True, timeout=30, console_log=tmp_path / "console.log",
                        host=td_host(tmp_path))
    assert "not running as a TD: not a TD: no tdx_guest CPU flag" in str(raised.value)

    qemu.behave(console=TD_LINE)
    result = boot.boot_image(image, tdx=True, timeout=30, console_log=tmp_path / "console.log",
                             host=td_host(tmp_path, td_measured_boot=None))
    assert (result.accel, result.selfcheck["td"]) == ("kvm", True)
    # no such firmware file here: nobody can say whether the TD's boot reached its RTMRs
    assert "could not be read" in result.firmware_note and result.measurements is None


def test_a_missing_or_corrupt_image_is_an_input_error(qemu, image, tmp_path):
    corrupt = tmp_path / "corrupt.qcow2"
    corrupt.write_bytes(b"QFI\xfb" + b"\xff" * 508)  # qcow2 magic, nonsense header
    for bad in (tmp_path / "missing.qcow2", tmp_path, corrupt):
        with pytest.raises(InputError):
            boot.boot_image(bad, accel="tcg", console_log=tmp_path / "console.log")
    assert not qemu.started


def test_the_result_serialises_for_the_build_record(qemu, image, tmp_path):
    qemu.behave(console=REAL_LINE)
    result = boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "c.log")
    assert set(json.loads(json.dumps(result.to_dict()))) == {
        "schema_version", "accel", "fallback_reason", "seconds_to_selfcheck", "selfcheck",
        "console_log", "measurements", "firmware_note", "event_log"}


def test_boot_json_matches_the_shipped_schema(qemu, image, tmp_path):
    qemu.behave(console=REAL_LINE)
    plain = boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "c.log")
    qemu.behave(console=TD_LINE)
    td = boot.boot_image(image, tdx=True, timeout=30, console_log=tmp_path / "td.log",
                         host=td_host(tmp_path))
    for result in (plain, td):
        document = json.loads(json.dumps(result.to_dict()))
        assert schema_errors("boot", document) == []
    assert schema_errors("boot", {**document, "accel": "hvf"})
    assert schema_errors("boot", {**document, "selfcheck": {"td": "yes", "version": 1}})


def test_progress_reports_elapsed_time_and_the_last_console_line(qemu, image, tmp_path):
    qemu.behave(console="Welcome to GRUB!\n\x1b[0mLoading Linux 6.12 ...\r\n")
    seen = []

    with pytest.raises(CheckFailed):
        boot.boot_image(image, accel="tcg", timeout=1, console_log=tmp_path / "console.log",
                        progress=lambda elapsed, line: seen.append((elapsed, line)))

    assert seen and all(b[0] >= a[0] for a, b in itertools.pairwise(seen))
    assert seen[-1][0] > 1 and seen[-1][1] == "Loading Linux 6.12 ..."


def test_boot_ends_with_a_pass_line_that_says_what_booted(qemu, image, tmp_path):
    qemu.behave(console=REAL_LINE)
    result = CliRunner().invoke(boot_verb.boot_command, [str(image), "--accel", "tcg",
                                                    "--console-log", str(tmp_path / "c.log")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("PASS: booted as a normal VM (not a TD, as launched) under tcg in ")
    assert "guest says: not a TD: no tdx_guest CPU flag" in result.stdout


def test_boot_fails_with_a_fail_line_and_the_reason(qemu, image, tmp_path):
    qemu.behave(console=DISK_NOT_BOOTABLE)
    result = CliRunner().invoke(boot_verb.boot_command, [str(image), "--accel", "tcg",
                                                    "--console-log", str(tmp_path / "c.log")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"FAIL: boot test of {image}")
    assert "no EFI boot loader" in str(result.exception)


def test_boot_takes_the_firmware_given_and_names_the_package_when_there_is_none(qemu, image,
                                                                                tmp_path):
    unified = firmware_volume(tmp_path / "OVMF.fd")
    qemu.behave(console=REAL_LINE)
    boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "c.log", firmware=unified)
    arguments = (tmp_path / "pid.args").read_text().splitlines()
    assert f"if=pflash,format=raw,snapshot=on,file={unified}" in arguments

    with pytest.raises(HostError) as raised:
        boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "c.log",
                        host=FakeHost(ovmf=None, family="fedora"))
    assert raised.value.hint == "dnf install edk2-ovmf, or pass --firmware FILE"


def test_on_a_terminal_boot_shows_progress_and_ends_with_the_verdict(qemu, image, tmp_path):
    from tests.conftest import run_cli_on_terminal

    qemu.behave(console="Welcome to GRUB!\r\nLoading Linux 6.12 ...\r\n")
    status, output = run_cli_on_terminal("boot", image, "--accel", "tcg", "--timeout", "2",
                                         "--console-log", tmp_path / "c.log", timeout=60)

    assert status == 1
    assert f"booting {image.name}" in output and "/ 2 s" in output  # elapsed / timeout
    assert "Loading Linux 6.12 ..." in output  # the console's last line
    assert "FAIL" in output and "error: boot test failed: no self-check line within 2 s" in output
    qemu.assert_gone()


def channel_text(log: bytes) -> str:
    """What the guest's self-check writes to its second serial port for ``log``."""
    lines = base64.encodebytes(log).decode()
    firmware = "\x1b[2JBdsDxe: loading Boot0001\r\nEFI stub: UEFI Secure Boot is enabled.\r\n"
    return f"{firmware}TDX-EVENTLOG-BEGIN\n{lines}TDX-EVENTLOG-END {hashlib.sha256(log).hexdigest()}\n"


def test_the_guests_event_log_is_written_where_asked(qemu, image, tmp_path):
    log = synthetic_log([(0, 8, b"v"), (4, 4, b"\0" * 4)])  # a TPM log: S-CRTM, separator
    qemu.behave(console=REAL_LINE, channel=channel_text(log))

    result = boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "c.log",
                             event_log=tmp_path / "tpm.log")

    assert (tmp_path / "tpm.log").read_bytes() == log
    assert result.to_dict()["event_log"] == {"events": 2, "differences": [],
                                             "file": str(tmp_path / "tpm.log")}
    args = (tmp_path / "pid.args").read_text().splitlines()
    assert args.count("-serial") == 2  # the console, then the self-check's channel


@pytest.mark.parametrize("channel, message", [
    ("", "printed no event log"),
    ("BdsDxe\nAAAA\nTDX-EVENTLOG-END " + "0" * 64 + "\n", "printed no event log"),
    ("TDX-EVENTLOG-BEGIN\nAAAA\nTDX-EVENTLOG-END " + "0" * 64 + "\n", r"damaged \(its SHA-256 differs\)"),
    ("TDX-EVENTLOG-BEGIN\nAA*A\nTDX-EVENTLOG-END " + "0" * 64 + "\n", "damaged"),
    (channel_text(b"not a log"), "cannot be read: too short for a TCG event log"),
])
def test_a_missing_or_damaged_event_log_fails_the_boot(qemu, image, tmp_path, channel, message):
    qemu.behave(console=REAL_LINE, channel=channel)

    with pytest.raises(CheckFailed, match=message):
        boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "c.log",
                        event_log=tmp_path / "tpm.log")
    assert not (tmp_path / "tpm.log").exists()


def test_a_tds_ccel_is_written_where_asked_and_its_absence_named(qemu, image, tmp_path):
    ccel = generated_ccel([(2, 4, b"\0" * 4)])  # what the TD's self-check sends
    qemu.behave(console=TD_LINE, channel=channel_text(ccel))
    boot.boot_image(image, tdx=True, timeout=30, console_log=tmp_path / "td.log",
                    host=td_host(tmp_path), event_log=tmp_path / "ccel.dat")
    assert (tmp_path / "ccel.dat").read_bytes() == ccel

    qemu.behave(console=TD_LINE)
    with pytest.raises(CheckFailed, match="the TD sent no event log"):
        boot.boot_image(image, tdx=True, timeout=30, console_log=tmp_path / "td.log",
                        host=td_host(tmp_path), event_log=tmp_path / "none.dat")


def test_a_gcp_image_boots_with_its_disk_on_an_emulated_nvme_controller(qemu, image, tmp_path):
    qemu.behave(console=REAL_LINE)
    boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "c.log", cloud=GCP)
    args = (tmp_path / "pid.args").read_text().splitlines()
    drive = next(arg for arg in args if "overlay.qcow2" in arg)
    assert ",if=none,id=disk0," in drive and "if=virtio" not in drive
    assert args[args.index(drive) + 1:args.index(drive) + 3] == ["-device", "nvme,serial=tdx-image-disk0,drive=disk0"]
    qemu.assert_gone()


def test_an_azure_image_is_refused_with_the_reason_before_qemu(qemu, image, tmp_path):
    result = CliRunner().invoke(boot_verb.boot_command, [str(image), "--cloud", "azure",
                                                         "--console-log", str(tmp_path / "c.log")])
    assert isinstance(result.exception, InputError)  # exit 2 through the CLI
    assert "VMBus devices (storvsc disk, netvsc NIC) cannot be emulated by QEMU" in str(result.exception)
    assert f"tdx-image validate --cloud azure {image}" in str(result.exception)
    assert not qemu.started


@pytest.mark.parametrize("packing", ["gce-tar", "vpc"])
def test_an_overlay_on_a_gce_tar_or_a_fixed_vhd_shows_the_guest_its_disk(synthetic_image, tmp_path, packing):
    image = gce_tar(synthetic_image, tmp_path) if packing == "gce-tar" else fixed_vhd(synthetic_image, tmp_path)
    (tmp_path / "work").mkdir()
    overlay = tmp_path / "work" / "overlay.qcow2"
    boot.create_overlay(image, boot.disk_format(image), overlay)
    same = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", overlay, synthetic_image],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    if packing == "gce-tar":  # unpacked beside the overlay, removed with it
        assert sorted(path.name for path in overlay.parent.iterdir()) == ["disk.raw", "overlay.qcow2"]


def test_booting_a_gce_tar_leaves_nothing_behind(qemu, synthetic_image, tmp_path, monkeypatch):
    image = gce_tar(synthetic_image, tmp_path)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temporary))
    qemu.behave(console=REAL_LINE)
    result = boot.boot_image(image, accel="tcg", timeout=30, console_log=tmp_path / "c.log", cloud=GCP)
    assert result.selfcheck["kernel"] and list(temporary.iterdir()) == []
    args = (tmp_path / "pid.args").read_text().splitlines()
    assert any("overlay.qcow2,if=none,id=disk0,format=qcow2" in arg for arg in args)
