"""The boot test on the real debian image built in this run, under whatever accelerator works
here (software emulation on the CI machines), and doctor on this host."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from imagebuilder.host import requirements, virt
from imagebuilder.host.facts import HostFacts

from ..conftest import run_cli

pytestmark = pytest.mark.integration

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def processes_mentioning(path: Path) -> list[int]:
    """Pids whose command line names ``path`` (a boot's console log names its QEMU)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(path).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


def test_debian_boots_to_the_selfcheck(debian_image, tmp_path):
    before = debian_image.stat()
    log = tmp_path / "console.log"

    result = run_cli("boot", debian_image, "--json", "--console-log", log, "--timeout", 600)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    selfcheck = report["selfcheck"]
    assert selfcheck["td"] is False  # no TDX hardware: a plain VM, and the guest says why
    assert selfcheck["reason"].startswith("not a TD: no tdx_guest CPU flag")
    assert selfcheck["kernel"].startswith("6.12") and selfcheck["config_intel_tdx_guest"] == "y"
    if report["accel"] == "tcg":
        assert report["fallback_reason"].startswith("KVM unusable: ")
    assert "TDX-SELFCHECK" in log.read_text(errors="replace")
    after = debian_image.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert processes_mentioning(log) == []


def test_an_image_with_its_esp_emptied_fails_with_the_reason(debian_image, tmp_path):
    raw = tmp_path / "broken.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", debian_image, raw], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    esp = next(p for p in table["partitions"] if p["type"] == ESP_TYPE)
    subprocess.run(["mdeltree", "-i", f"{raw}@@{esp['start'] * 512}", "::/EFI"], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    log = tmp_path / "console.log"

    result = run_cli("boot", raw, "--console-log", log, "--timeout", 90)

    assert result.returncode == 1, result.stderr
    assert "boot test failed" in result.stderr
    assert "no EFI boot loader on the disk" in result.stderr
    assert "last console lines: " in result.stderr
    assert processes_mentioning(log) == []


def test_tdx_on_a_host_without_tdx_stops_before_qemu(debian_image, tmp_path):
    if not requirements.tdx_host_problems(None, HostFacts()):
        pytest.skip("this host can run TDs")
    log = tmp_path / "console.log"

    result = run_cli("boot", debian_image, "--tdx", "--console-log", log)

    assert result.returncode == 3, result.stderr
    assert "this host cannot run a TD: " in result.stderr
    assert not log.exists()  # QEMU creates the log as it starts: it never ran


def test_doctor_reports_this_host_as_it_is():
    result = run_cli("doctor", "--json")

    report = json.loads(result.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert result.returncode == (0 if report["ok"] else 3)
    if "vfat" not in Path("/proc/filesystems").read_text().split():
        assert checks["vfat (EFI partition)"]["detail"].endswith("written with mtools instead")
    vendor = next(line.split(":")[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("vendor_id"))
    assert checks["CPU"]["detail"].startswith(vendor)
    if virt.kvm_tdx_enabled() != "Y":
        assert checks["kvm_intel tdx"]["status"] == "fail" and not report["ok"]
