"""Measured boot on the real debian image: the prediction from the image alone equals what the
guest reads from a software TPM in the reference VM, and the parts of the prediction that come
from the image's EFI binaries are checked against independent readings of those binaries."""

import hashlib
import json
import os
import struct
import subprocess

import pytest

from imagebuilder.measure import components
from imagebuilder.measure.efi import EFI_CERT_X509_GUID, GrubImage, PeImage, Shim

from ..conftest import esp_files, image_with_grub_cfg, run_cli

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def measured(debian_image) -> dict:
    result = run_cli("measure", debian_image, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def efi_binaries(debian_image, tmp_path_factory) -> dict[str, bytes]:
    """shim and grub, copied out of the image's ESP with mtools (not with the code under test)."""
    copied = esp_files(debian_image, ["BOOTX64.EFI", "grubx64.efi"], tmp_path_factory.mktemp("esp"))
    return {name: path.read_bytes() for name, path in copied.items()}


def reference_authenticode_sha384(data: bytes) -> bytes:
    """The PE/COFF Authenticode hash written out from Microsoft's "Windows Authenticode Portable
    Executable Signature Format" steps, to cross-check the library the product uses."""
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    sections, optional_size = struct.unpack_from("<H", data, pe + 6)[0], struct.unpack_from("<H", data, pe + 20)[0]
    optional = pe + 24
    magic = struct.unpack_from("<H", data, optional)[0]
    directories = optional + (112 if magic == 0x20B else 96)
    checksum, security = optional + 64, directories + 4 * 8
    headers_size = struct.unpack_from("<I", data, optional + 60)[0]
    cert_offset, cert_size = struct.unpack_from("<II", data, security)
    digest = hashlib.sha384()
    digest.update(data[:checksum])
    digest.update(data[checksum + 4 : security])
    digest.update(data[security + 8 : headers_size])
    table = optional + optional_size
    raw_sections = sorted(struct.unpack_from("<II", data, table + 40 * i + 16)
                          for i in range(sections))  # (SizeOfRawData, PointerToRawData)
    raw_sections = sorted(((pointer, size) for size, pointer in raw_sections if size))
    end = headers_size
    for pointer, size in raw_sections:
        digest.update(data[pointer : pointer + size])
        end = max(end, pointer + size)
    trailing_end = cert_offset if cert_size else len(data)
    digest.update(data[end:trailing_end])
    return digest.digest()


def test_authenticode_of_the_real_shim_and_grub(efi_binaries, measured):
    for name in ("BOOTX64.EFI", "grubx64.efi"):
        digest = PeImage(efi_binaries[name], name).authenticode_sha384
        assert digest == reference_authenticode_sha384(efi_binaries[name])
        assert any(e["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION" and e["sha384"] == digest.hex()
                   and name in e["description"] for e in measured["events"])


def test_shim_moklist_is_debians_vendor_certificate(efi_binaries, tmp_path):
    shim = Shim(efi_binaries["BOOTX64.EFI"], "BOOTX64.EFI")
    moklist, moklistx, trusted = shim.mok_events()
    assert (moklist.name, moklistx.name, trusted.name) == ("MokList", "MokListX", "MokListTrusted")
    assert moklist.data[:16] == EFI_CERT_X509_GUID and trusted.data == b"\x01"
    (tmp_path / "vendor.der").write_bytes(moklist.data[44:])
    subject = subprocess.run(["openssl", "x509", "-inform", "der", "-noout", "-subject", "-in",
                              tmp_path / "vendor.der"], capture_output=True, text=True, check=True)
    assert "Debian" in subject.stdout
    assert components.shim(shim).in_td  # shim 16.1 logs through EFI_CC_MEASUREMENT_PROTOCOL


def test_debian_grub_carries_its_bootstrap_and_no_td_measurement(efi_binaries):
    grub = GrubImage(efi_binaries["grubx64.efi"], "grubx64.efi")
    assert "(memdisk)/grub.cfg" in grub.embedded_config and grub.prefix == "/EFI/debian"
    assert grub.memdisk is not None
    assert grub.has_module("ext2") and grub.has_module("part_gpt") and not grub.has_module("lvm_nonexistent")
    assert "feature_menuentry_id" in grub.feature_variables
    component = components.grub(grub)
    assert component.version.startswith("2.06-") and component.in_td is False


def test_measure_predicts_every_register_offline(measured, debian_image):
    hexdigit = set("0123456789abcdef")
    assert set(measured["rtmr"]) == {"1", "2"}
    assert set(measured["pcr_sha384"]) == {"4", "5", "8", "9", "11", "12", "14"}
    for value in [*measured["rtmr"].values(), *measured["pcr_sha384"].values()]:
        assert len(value) == 96 and set(value) <= hexdigit
    assert measured["unpredicted"] == {}
    files = [e["description"] for e in measured["events"] if e["pcr"] == 9]
    assert any(path.startswith("/boot/vmlinuz-") for path in files)
    assert any(path.startswith("/boot/initrd.img-") for path in files)
    assert measured["verifier"]["go_tdx_guest_check"].startswith(f"-rtmrs ,{measured['rtmr']['1']},")


def test_the_guest_reads_the_predicted_pcrs_in_the_reference_vm(debian_image, measured, tmp_path):
    log, scratch = tmp_path / "console.log", tmp_path / "tmp"
    scratch.mkdir()

    result = run_cli("boot", debian_image, "--tpm", "--json", "--console-log", log, "--timeout", 900,
                     env={**os.environ, "TMPDIR": str(scratch)})

    assert result.returncode == 0, result.stderr + "\n" + "\n".join(
        log.read_text(errors="replace").splitlines()[-20:])
    report = json.loads(result.stdout)
    assert report["selfcheck"]["pcr_sha384"] == measured["pcr_sha384"]
    assert all(pair["guest"] == pair["predicted"] for pair in report["measurements"].values())
    assert list(scratch.iterdir()) == []  # swtpm's state went with the boot's directory


def test_build_publishes_measurements_that_validate_checks(debian_build, debian_image, measured, tmp_path):
    published = debian_build / "measurements.json"
    record = json.loads((debian_build / "build.json").read_text())
    assert record["artifacts"]["measurements.json"]["sha256"] == hashlib.sha256(published.read_bytes()).hexdigest()
    assert json.loads(published.read_text())["pcr_sha384"] == measured["pcr_sha384"]

    assert run_cli("validate", debian_image, "--measurements", published).returncode == 0
    tampered = tmp_path / "measurements.json"
    document = json.loads(published.read_text())
    document["pcr_sha384"]["8"] = "0" * 96
    tampered.write_text(json.dumps(document))
    result = run_cli("validate", debian_image, "--measurements", tampered, "--json")
    assert result.returncode == 1
    check = next(c for c in json.loads(result.stdout)["checks"] if c["id"] == "measurements.match")
    assert check["status"] == "fail" and "PCR 8" in check["evidence"] and "PCR 9" not in check["evidence"]


def test_a_menu_that_waits_makes_grubs_registers_unpredicted_not_wrong(debian_image, measured, tmp_path):
    raw = image_with_grub_cfg(debian_image, tmp_path,
                              lambda text: text.replace("set timeout=", "set timeout=-1 ignored="))

    result = run_cli("measure", raw, "--json")

    assert result.returncode == 1 and "unpredicted: pcr 8, pcr 9, rtmr 2" in result.stderr
    document = json.loads(result.stdout)
    assert "waits for a key press" in document["unpredicted"]["pcr 8"]
    assert document["pcr_sha384"]["8"] is None and document["rtmr"]["2"] is None
    for pcr in ("4", "5", "14"):  # what comes before grub is still known, and unchanged
        assert document["pcr_sha384"][pcr] == measured["pcr_sha384"][pcr]
