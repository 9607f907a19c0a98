"""The real debian build, published: what a CI pipeline picks up must be complete and true.

These read the image with e2fsprogs directly (not with our validator) so the build is checked
independently of the code that checks images.
"""

import json
import subprocess
from pathlib import Path

import pytest

from imagebuilder.build import cleanup
from imagebuilder.schemas import RECORDS
from tests.conftest import schema_errors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def root_fs(debian_image, tmp_path_factory) -> Path:
    """The image's root partition as a raw ext4 file, for debugfs."""
    raw = tmp_path_factory.mktemp("rootfs") / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", debian_image, raw], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    root = next(p for p in table["partitions"] if p["type"] == "0FC63DAF-8483-4772-8E79-3D69D8477DE4")
    part = raw.with_name("root.ext4")
    subprocess.run(["dd", f"if={raw}", f"of={part}", "bs=512", f"skip={root['start']}",
                    f"count={root['size']}", "conv=sparse", "status=none"], check=True)
    raw.unlink()
    return part


def debugfs(fs: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, fs], capture_output=True, text=True,
                          check=True).stdout


def test_published_set_is_complete(debian_build):
    record = json.loads((debian_build / "build.json").read_text())
    names = {p.name for p in debian_build.iterdir()}
    image = record["image"]
    assert image.endswith(".qcow2")
    for expected in (f"{image}.sha256", "kiwi.result.json", "build.log", "overlay-manifest.json",
                     "validation.json", "validation.junit.xml", "boot.json", "boot-console.log",
                     "description"):
        assert expected in names
    assert any(name.endswith(".packages") for name in names)
    assert not any(name.endswith(".raw") for name in names)
    assert (debian_build / "description" / "config.xml").is_file()
    assert (debian_build / "description" / "kiwi-expanded.xml").is_file()
    assert record["artifacts"][image]["sha256"] in (debian_build / f"{image}.sha256").read_text()
    assert record["tools"]["kiwi"].startswith("11.1.")
    assert record["host"]["esp_fallback"] is not None
    assert record["durations_s"]["kiwi"] > 0 and "install packages" in record["durations_s"]["kiwi_phases"]
    assert json.loads((debian_build / "validation.json").read_text())["ok"] is True
    result = json.loads((debian_build / "kiwi.result.json").read_text())
    assert result["disk_format_image"]["filename"] == image



def test_published_records_match_their_schemas_and_name_no_staging_path(debian_build):
    for record in RECORDS:
        document = json.loads((debian_build / f"{record}.json").read_text())
        assert schema_errors(record, document) == [], record
    build = json.loads((debian_build / "build.json").read_text())
    assert build["boot_test"] == json.loads((debian_build / "boot.json").read_text())
    assert json.loads((debian_build / "validation.json").read_text())["image"] == str(
        debian_build.resolve() / build["image"])
    for path in debian_build.glob("*.json"):
        assert ".staging-" not in path.read_text(), path.name
    published = str(debian_build.resolve())
    for word in build["kiwi_command"]:  # a published path named there exists
        assert not word.startswith(published) or Path(word).exists(), word

def test_checksum_verifies(debian_build, debian_image):
    subprocess.run(["sha256sum", "--check", "--strict", f"{debian_image.name}.sha256"],
                   cwd=debian_build, check=True, capture_output=True)


def test_package_list_has_the_tdx_capable_kernel(debian_build):
    packages = next(debian_build.glob("*.packages")).read_text()
    assert any(line.startswith("linux-image-6.12") for line in packages.splitlines())


def test_kernel_config_enables_tdx_guest(root_fs):
    configs = [line.split()[-1] for line in debugfs(root_fs, "ls -l /boot").splitlines()
               if "config-6.12" in line]
    assert configs, "no /boot/config-6.12*"
    config = debugfs(root_fs, f"cat /boot/{configs[0]}")
    assert "CONFIG_INTEL_TDX_GUEST=y" in config.splitlines()


def test_overlay_files_are_inside(debian_build, root_fs):
    import hashlib

    manifest = json.loads((debian_build / "overlay-manifest.json").read_text())
    assert len(manifest["files"]) >= 6
    for path, entry in manifest["files"].items():
        content = subprocess.run(["debugfs", "-R", f"cat {path}", root_fs], capture_output=True,
                                 check=True).stdout
        assert hashlib.sha256(content).hexdigest() == entry["sha256"], path
    enabled = debugfs(root_fs, "ls /etc/systemd/system/multi-user.target.wants")
    assert "tdx-selfcheck.service" in enabled


def test_no_secrets_baked_in(root_fs):
    assert "ssh_host_" not in debugfs(root_fs, "ls /etc/ssh")
    shadow = debugfs(root_fs, "cat /etc/shadow").splitlines()
    root_hash = next(line for line in shadow if line.startswith("root:")).split(":")[1]
    assert root_hash in ("!*", "*", "!"), "root must have no usable password"
    for line in shadow:
        assert line.split(":")[1] != "", f"empty password field: {line.split(':')[0]}"
    assert debugfs(root_fs, "cat /etc/machine-id").strip() == ""


def test_boot_test_reached_the_self_check(debian_build):
    boot = json.loads((debian_build / "boot.json").read_text())
    assert boot["selfcheck"]["td"] is False  # no TDX hardware here
    assert boot["selfcheck"]["reason"]
    assert boot["selfcheck"]["config_intel_tdx_guest"] == "y"


def test_nothing_left_mounted_or_attached(debian_build):
    held, loops = cleanup.leftovers(debian_build.parent)
    assert (held, loops) == ([], [])
    assert not [p for p in debian_build.parent.iterdir() if ".staging-" in p.name]
