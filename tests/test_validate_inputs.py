"""`tdx-image validate` on good, bad and unreadable inputs: exit codes, reports, never a traceback."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from imagebuilder.core.errors import InputError
from imagebuilder.distros.clouds import QEMU
from imagebuilder.validate import CHECKS, validate_image
from imagebuilder.image.bootconfig import parse_grub_config
from imagebuilder.image.initrd import initrd_members
from imagebuilder.image.disk import open_disk
from tests.conftest import run_cli
from tests.test_validate_checks import build_synthetic_image, sh


@pytest.fixture(scope="module")
def synthetic_qcow2(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("synthetic-qcow2")
    qcow2 = workdir / "synthetic.qcow2"
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", build_synthetic_image(workdir), qcow2)
    return qcow2


def validate(*args) -> tuple[int, str, str]:
    result = run_cli("validate", *args)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


def test_good_qcow2_exits_0_with_json_and_junit(synthetic_qcow2, tmp_path):
    junit = tmp_path / "validation.xml"
    code, out, _ = validate(synthetic_qcow2, "--json", "--junit", junit)
    report = json.loads(out)
    assert (code, report["ok"]) == (0, True)
    qemu_checks = [check.id for check in CHECKS if check.applies_to(QEMU)]  # the default --cloud
    assert [check["id"] for check in report["checks"]] == qemu_checks
    assert {check["status"] for check in report["checks"]} == {"pass"}
    suite = ElementTree.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures")) == (str(len(qemu_checks)), "0")


def test_failed_check_exits_1_naming_it(tmp_path, synthetic_qcow2):
    code, out, err = validate(synthetic_qcow2, "--manifest", _manifest(tmp_path, "/etc/tdx-missing"))
    assert code == 1
    assert "overlay.files" in out and err.startswith("error:") and "overlay.files" in err


def _manifest(tmp_path: Path, path: str) -> Path:
    manifest = tmp_path / "overlay-manifest.json"
    manifest.write_text(json.dumps({"overlay": "tdx", "files": {path: {"sha256": "0" * 64, "mode": "0o644"}}}))
    return manifest


def test_junit_lists_failures(tmp_path, synthetic_qcow2):
    junit = tmp_path / "validation.xml"
    validate(synthetic_qcow2, "--manifest", _manifest(tmp_path, "/etc/tdx-missing"), "--junit", junit)
    failures = [case.get("name") for case in ElementTree.parse(junit).getroot().iter("testcase")
                if case.find("failure") is not None]
    assert failures == ["overlay.files"]


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(2**20))


def _truncated_qcow2(path: Path, source: Path) -> None:
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])


def _missing_backing_file(path: Path, source: Path) -> None:
    base = path.with_name("base.qcow2")
    sh("cp", source, base)
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", path)
    base.unlink()


def _encrypted(path: Path, _) -> None:
    # qcow2's own AES format: LUKS would time its key derivation, which fails on a loaded host
    sh("qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=s,data=pass", "-o",
       "encryption=on,encrypt.key-secret=s", path, "48M")


@pytest.mark.parametrize("make, expected", [
    (lambda path, _: path.write_bytes(b""), "empty file"),
    (lambda path, _: None, "does not exist"),
    (_truncated_qcow2, "damaged qcow2"),
    (_missing_backing_file, "names the backing file"),
    (_encrypted, "encrypted qcow2 images cannot be inspected"),
    (lambda path, _: sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", path, "48M"),
     "qcow2 feature not supported by the validator: extended L2 entries"),
], ids=["empty", "missing", "truncated qcow2", "missing backing file", "encrypted", "extended L2"])
def test_unreadable_image_exits_2_with_one_line(tmp_path, synthetic_qcow2, make, expected):
    image = tmp_path / "image.qcow2"
    make(image, synthetic_qcow2)
    code, _, err = validate(image)
    assert code == 2
    assert err.startswith("error:") and expected in err and err.count("\n") == 1
    with pytest.raises(InputError):
        validate_image(image)


def _zstd_copy(path: Path, source: Path) -> None:
    sh("qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", source, path)


def _overlay_on(path: Path, source: Path) -> None:
    """A qcow2 whose unwritten clusters come from its backing file; the free space after the root
    partition is written over (data, and a zero cluster)."""
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", source, "-F", "qcow2", path)
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 42M 1M", "-c", "write -z 44M 64k", path)


@pytest.mark.parametrize("make", [lambda path, source: sh("cp", source, path), _zstd_copy, _overlay_on],
                         ids=["zlib compressed", "zstd compressed", "backing file"])
def test_qcow2_reader_reads_what_qemu_reads(tmp_path, synthetic_qcow2, make):
    """Every byte the cluster reader returns is the byte qemu-img gives: the whole disk is compared."""
    image = tmp_path / "image.qcow2"
    make(image, synthetic_qcow2)
    raw = tmp_path / "disk.raw"
    sh("qemu-img", "convert", "-O", "raw", image, raw)
    expected = raw.read_bytes()
    disk = open_disk(image, allow_backing=True)
    assert disk.size == len(expected)
    step = 3 * 2**20 + 12345  # reads that straddle clusters
    assert all(disk.read(offset, step) == expected[offset:offset + step] for offset in range(0, len(expected), step))
    assert validate_image(image, allow_backing=True).ok


def test_bad_manifest_option_exits_2(tmp_path, synthetic_qcow2):
    not_json = tmp_path / "manifest.json"
    not_json.write_text("{")
    assert validate(synthetic_qcow2, "--manifest", tmp_path / "absent.json")[0] == 2
    assert validate(synthetic_qcow2, "--manifest", not_json)[0] == 2


@pytest.mark.parametrize("content", [lambda path: path.write_bytes(os.urandom(2**20)),
                                     lambda path: path.write_text("not a disk\n" * 1000)],
                         ids=["random bytes", "text"])
def test_not_a_disk_is_unreadable_input(tmp_path, content):
    """qemu-img calls any file raw; without an MBR or GPT signature it is no disk (issue 7)."""
    image = tmp_path / "image.raw"
    content(image)
    with pytest.raises(InputError, match="not a disk image"):
        validate_image(image)


def test_both_gpt_copies_damaged(tmp_path, synthetic_qcow2):
    raw = tmp_path / "disk.raw"
    sh("qemu-img", "convert", "-O", "raw", synthetic_qcow2, raw)
    with raw.open("r+b") as disk:
        for lba in (1, raw.stat().st_size // 512 - 1):
            disk.seek(lba * 512 + 24)  # the header's own LBA field, covered by its CRC
            byte = disk.read(1)[0]
            disk.seek(-1, 1)
            disk.write(bytes([byte ^ 0xFF]))
    gpt = next(check for check in validate_image(raw).checks if check.id == "disk.gpt")
    assert gpt.status == "fail" and "primary" in gpt.detail and "backup" in gpt.detail


def test_grub_default_follows_saved_entry_and_submenu_paths():
    config = """
set default="${saved_entry}"
menuentry 'A' --id a {
    linux /boot/vmlinuz-a console=hvc0
}
submenu 'More' --id more {
    menuentry 'B' --id b {
        linux /boot/vmlinuz-b quiet
        initrd /boot/ucode.img /boot/initrd-b
    }
}
"""
    assert parse_grub_config(config, saved_entry="more>b").default_entry().initrds == ["/boot/ucode.img", "/boot/initrd-b"]
    assert parse_grub_config(config, saved_entry="1>0").default_entry().kernel == "/boot/vmlinuz-b"
    assert parse_grub_config(config).default_entry().title == "A"
    assert parse_grub_config(config, saved_entry="gone").default_entry() is None


@pytest.mark.parametrize("compressor", ["xz", "gzip", "zstd", "lz4"])
def test_initrd_members_of_each_compression(tmp_path, compressor):
    (tmp_path / "usr/lib/modules/6.12/kernel").mkdir(parents=True)
    (tmp_path / "usr/lib/modules/6.12/kernel/virtio_net.ko.zst").write_bytes(b"m")
    archive = sh("cpio", "-o", "-H", "newc", "--quiet", stdin=b"usr/lib/modules/6.12/kernel/virtio_net.ko.zst\n", cwd=tmp_path)
    compress = {"xz": ["xz", "--check=crc32", "-c"], "lz4": ["lz4", "-l", "-c"]}.get(compressor, [compressor, "-c"])
    packed = sh(*compress, stdin=archive)
    assert initrd_members(packed) == ["usr/lib/modules/6.12/kernel/virtio_net.ko.zst"]
