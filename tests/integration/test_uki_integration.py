"""The debian 13 image's UKI chain, measured: what `measure` predicts from the image is checked
against independent readings of the UKI (mtools, objcopy) and against the guest's own TPM
registers and event log in the reference VM (swtpm). Skips when the image boots no UKI."""

import hashlib
import json
import os
import subprocess

import pytest

from ..conftest import run_cli

pytestmark = pytest.mark.integration

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
SECTIONS = [".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat"]


@pytest.fixture(scope="module")
def uki(debian_image, tmp_path_factory):
    """\\EFI\\BOOT\\BOOTX64.EFI copied out with mtools; skip if it is not a systemd-stub UKI."""
    work = tmp_path_factory.mktemp("uki")
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", debian_image, raw], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    esp = next(p for p in table["partitions"] if p["type"] == ESP_TYPE)
    subprocess.run(["mcopy", "-i", f"{raw}@@{esp['start'] * 512}", "::/EFI/BOOT/BOOTX64.EFI",
                    work / "uki.efi"], check=True, env=MTOOLS_ENV)
    raw.unlink()
    if b"#### LoaderInfo: systemd-stub" not in (work / "uki.efi").read_bytes():
        pytest.skip("this image boots no UKI (debian 12 / SUSE: shim and grub)")
    return work / "uki.efi"


@pytest.fixture(scope="module")
def measured(debian_image, uki) -> dict:
    result = run_cli("measure", debian_image, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def section(uki, name: str, work) -> bytes:
    out = work / name.lstrip(".")
    subprocess.run(["objcopy", "--dump-section", f"{name}={out}", uki, work / "scratch.efi"],
                   check=True, capture_output=True)
    return out.read_bytes()


def test_systemd_stub_measures_the_ukis_sections_into_pcr_11_and_rtmr_2(uki, measured, tmp_path):
    stub = [e for e in measured["events"] if e["pcr"] == 11 and not e.get("after_boot")]
    names = [e["description"] for e in stub[::2]]
    assert names == [name for name in SECTIONS if name in names] and ".cmdline" in names
    for name, (label, data) in zip(names, zip(stub[::2], stub[1::2])):
        assert label["sha384"] == hashlib.sha384(name.encode() + b"\0").hexdigest()
        assert data["sha384"] == hashlib.sha384(section(uki, name, tmp_path)).hexdigest(), name
    assert all(e["by"].startswith("systemd-stub 257.") and e["in_td"] for e in stub)
    rtmr2 = [e["sha384"] for e in measured["rtmr_events"] if e["rtmr"] == 2]
    assert [e["sha384"] for e in stub] == rtmr2[:len(stub)]


def test_the_kernel_and_its_initrd_reach_the_rtmrs(measured):
    kernel_events = [e for e in measured["events"] if e["pcr"] == 9]
    assert [e["description"] for e in kernel_events] == ["LOADED_IMAGE::LoadOptions", "Linux initrd"]
    assert all(e["by"].startswith("linux 6.12.") and e["in_td"] for e in kernel_events)
    linux = [e for e in measured["events"] if e["description"].endswith(":.linux (Authenticode; "
                                                                          "LoadImage by systemd-stub)")]
    assert len(linux) == 1 and linux[0]["pcr"] == 4
    rtmr1 = [e["description"] for e in measured["rtmr_events"] if e["rtmr"] == 1]
    assert linux[0]["description"] in rtmr1
    assert measured["unpredicted"] == {}


def test_boot_tpm_shows_the_predicted_pcrs_and_event_log(debian_image, measured, tmp_path):
    log = tmp_path / "console.log"
    result = run_cli("boot", debian_image, "--tpm", "--json", "--console-log", log, "--timeout", 900)
    assert result.returncode == 0, result.stderr + "\n" + "\n".join(
        log.read_text(errors="replace").splitlines()[-20:])
    report = json.loads(result.stdout)
    assert report["selfcheck"]["pcr_sha384"] == measured["pcr_sha384"]
    assert report["event_log"] is not None and report["event_log"]["differences"] == []
    firmware_events = [e for e in measured["events"] if not e.get("after_boot")]
    assert report["event_log"]["events"] >= len(firmware_events)


def test_a_verity_roots_hash_is_measured_with_the_command_line(uki, measured, tmp_path):
    cmdline = section(uki, ".cmdline", tmp_path)
    if b"roothash=" not in cmdline:
        pytest.skip("this build has a writable root (--root writable)")
    measured_cmdline = [e for e in measured["events"] if e["pcr"] == 11 and e["description"] == ".cmdline"]
    assert measured_cmdline[1]["sha384"] == hashlib.sha384(cmdline).hexdigest()
    assert measured_cmdline[1]["in_td"]  # RTMR2 in a TD: the root hash is attested
