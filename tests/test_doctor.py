"""doctor's decisions with faked probes: statuses, details, JSON and the exit code."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagebuilder import cli
from imagebuilder.host import virt
from imagebuilder.commands import doctor
from imagebuilder.core.errors import RepositoryError
from imagebuilder.core.results import FAIL, PASS, WARN, Result
from tests.conftest import FakeHost, run_cli
from tests.test_uki_measure import REFERENCE


def doctor_check(name: str, host: FakeHost) -> Result:
    """One row of doctor's build section, as doctor evaluates it on ``host``."""
    return next(check for check in doctor.host_checks("build", Path("."), host) if check.id == name)


def test_no_vfat_with_mtools_is_the_fallback():
    check = doctor_check("vfat (EFI partition)", FakeHost(mounts_vfat=False))
    assert (check.status, check.detail) == (
        WARN, "the kernel cannot mount vfat: the EFI partition is written with mtools instead")


def test_no_vfat_and_no_mtools_fails():
    check = doctor_check("vfat (EFI partition)", FakeHost(mounts_vfat=False, missing={"mcopy"}))
    assert check.status == FAIL and "mcopy" in check.detail


def test_a_kernel_with_vfat_needs_no_fallback():
    assert doctor_check("vfat (EFI partition)", FakeHost(mounts_vfat=True)).status == PASS


def test_missing_tools_name_their_packages():
    check = doctor_check("host tools", FakeHost(missing={"sgdisk"}, family="debian"))
    assert (check.status, check.detail, check.hint) == (FAIL, "sgdisk is not installed", "apt-get install gdisk")


def test_an_unreachable_repository_warns_for_that_target(monkeypatch):
    def unreachable(repositories, credentials, timeout):
        raise RepositoryError("repository leap-oss is unreachable at https://example.invalid/")

    monkeypatch.setattr(doctor, "check_reachable", unreachable)
    check = doctor.repository_check("leap")
    assert check.status == WARN and "leap-oss is unreachable" in check.detail


def test_reachable_repositories_are_counted(monkeypatch):
    monkeypatch.setattr(doctor, "check_reachable", lambda repositories, credentials, timeout: None)
    check = doctor.repository_check("leap")
    assert (check.status, check.detail) == (PASS, "1 reachable")  # Leap 16.0: repo/oss/x86_64


def test_a_host_like_the_ci_machines_is_reported_as_it_is():
    host = FakeHost(cpu_vendor="GenuineIntel", kvm_tdx="", qemu_has_tdx_guest=False, tdvf=None,
                    kvm_failure="QEMU stops with 'KVM internal error. Suberror: 1'",
                    devices={virt.KVM_DEVICE})
    checks = {check.id: check for check in doctor.tdx_checks(host)}

    assert checks["CPU"].status == PASS
    assert checks["kvm_intel tdx"].detail.startswith("kvm_intel is not loaded")
    assert checks["KVM"].status == FAIL and "fall back to software emulation" in checks["KVM"].detail
    assert checks["QEMU tdx-guest"].detail == "QEMU 7.2.22 has no tdx-guest object (needs QEMU >= 10.1)"
    assert checks["TDVF firmware"].status == FAIL


def test_a_tdx_host_passes(tmp_path):
    host = FakeHost(cpu_vendor="GenuineIntel", kvm_tdx="Y", kvm_failure=None, qemu_has_tdx_guest=True,
                    tdvf=tmp_path / "OVMF.fd", devices={virt.KVM_DEVICE})
    assert {check.status for check in doctor.tdx_checks(host)} == {PASS}


def tdx_host(**facts) -> FakeHost:
    return FakeHost(cpu_vendor="GenuineIntel", kvm_tdx="Y", kvm_failure=None, qemu_has_tdx_guest=True,
                    devices={virt.KVM_DEVICE}, **facts)


def test_a_tdvf_without_measured_boot_warns_what_a_quote_then_attests(tmp_path):
    host = tdx_host(tdvf=tmp_path / "OVMF.fd", td_measured_boot=False)
    check = {check.id: check for check in doctor.tdx_checks(host)}["TDVF firmware"]
    assert check.status == WARN
    assert "no TdTcg2Dxe" in check.detail and "attests the firmware (MRTD) alone" in check.detail


TRIXIE_OVMF = REFERENCE / "trixie/ovmf/usr/share/ovmf/OVMF.fd"
BOOKWORM_OVMF = Path("/usr/share/ovmf/OVMF.fd")


@pytest.mark.parametrize("firmware, status", [(BOOKWORM_OVMF, WARN), (TRIXIE_OVMF, PASS)],
                         ids=["bookworm", "trixie"])
def test_doctor_reads_the_given_tdvfs_firmware_volumes(firmware, status):
    """Real firmware files: Debian 12's OVMF.fd has no TdTcg2Dxe, Debian 13's has."""
    if not firmware.exists():
        pytest.skip(f"{firmware} missing (tests/fetch-reference-packages.sh, the ovmf package)")
    host = tdx_host(td_measured_boot=None)  # read from the file
    check = {check.id: check for check in doctor.tdx_checks(host, firmware)}["TDVF firmware"]
    assert check.status == status, check.detail


@pytest.mark.parametrize("firmware, noted", [(BOOKWORM_OVMF, True), (TRIXIE_OVMF, False)],
                         ids=["bookworm", "trixie"])
def test_run_tdx_says_when_the_firmware_measures_nothing(synthetic_image, firmware, noted):
    if not firmware.exists():
        pytest.skip(f"{firmware} missing")
    result = run_cli("run", synthetic_image, "--tdx", "--firmware", firmware)
    assert result.returncode == 0, result.stderr
    assert ("no TdTcg2Dxe" in result.stderr) is noted, result.stderr


def test_the_tdvf_that_measures_the_boot_is_preferred(monkeypatch):
    if not (TRIXIE_OVMF.exists() and BOOKWORM_OVMF.exists()):
        pytest.skip("needs bookworm's and trixie's OVMF.fd")
    monkeypatch.setattr(virt, "TDVF_CANDIDATES", (BOOKWORM_OVMF, TRIXIE_OVMF))
    assert virt.find_tdvf() == TRIXIE_OVMF
    monkeypatch.setattr(virt, "TDVF_CANDIDATES", (BOOKWORM_OVMF,))
    assert virt.find_tdvf() == BOOKWORM_OVMF  # still a TD, with a warning


@pytest.fixture
def canned_checks(monkeypatch):
    def use(build: list[Result], tdx: list[Result]):
        monkeypatch.setattr(doctor, "build_checks", lambda build_dir, host: build)
        monkeypatch.setattr(doctor, "tdx_checks", lambda host, firmware=None: tdx)
    return use


def test_json_lists_every_check_and_the_exit_code_follows_failures(canned_checks):
    canned_checks([Result("root", PASS, "running as root", group="build")],
                  [Result("CPU", FAIL, "AuthenticAMD", group="tdx")])

    result = CliRunner().invoke(cli.main, ["doctor", "--json"])

    report = json.loads(result.stdout)  # one document: the checks and the error
    assert report["ok"] is False and report["exit_code"] == 3 and "tdx: CPU" in report["error"]
    assert [check["name"] for check in report["checks"]] == ["root", "CPU"]
    assert result.exit_code == 3 and "tdx: CPU" in result.stderr


def test_only_build_ignores_the_tdx_host(canned_checks):
    canned_checks([Result("vfat (EFI partition)", WARN, "mtools fallback", group="build")],
                  [Result("CPU", FAIL, "AuthenticAMD", group="tdx")])

    result = CliRunner().invoke(doctor.doctor_command, ["--only", "build"])

    assert result.exit_code == 0, result.output
    assert "vfat (EFI partition)" in result.stdout and "CPU" not in result.stdout


def test_suse_targets_on_another_host_point_at_the_container():
    check = doctor_check("SUSE targets (leap, sles)", FakeHost(build_host_problem="not a SUSE 15 host"))
    assert (check.status, check.detail, check.hint) == (
        WARN, "not a SUSE 15 host",
        "build in the target's own container: sudo tdx-image build leap --container")


def test_suse_targets_on_a_suse_15_host_build_natively():
    assert doctor_check("SUSE targets (leap, sles)", FakeHost(build_host_problem=None)).status == PASS
