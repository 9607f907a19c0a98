"""The sealed debian 13 image for real: the default build, its UKI and dm-verity root checked
offline, its boot to the self-check (also with a software TPM), and one changed byte in a file's
data on the root partition failing validation and the boot."""

import json
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from imagebuilder.image.disk import open_disk
from imagebuilder.image.inspection import Inspection

from ..conftest import run_cli

pytestmark = pytest.mark.integration

# Read at every boot (PID 1 itself), so a boot cannot pass a changed block unread.
TAMPERED_FILE = "/usr/lib/systemd/systemd"


def test_the_default_debian_build_is_debian_13_with_a_uki_and_a_verity_root(debian13_build, debian13_image):
    record = json.loads((debian13_build / "build.json").read_text())
    assert (record["target"]["release"], record["inputs"]["root"]) == ("13", "verity")
    with closing(open_disk(debian13_image)) as disk:
        image = Inspection(disk)
        uki = image.uki
        assert uki is not None and not uki.missing()
        assert uki.os_release["VERSION_ID"] == "13" and uki.uname.startswith("6.12")
        arguments = image.kernel_arguments
        assert arguments["root"] == "/dev/mapper/root" and arguments["systemd.volatile"] == "overlay"
        assert arguments["systemd.verity_root_options"] == "panic-on-corruption"
        assert image.kernel_config["CONFIG_INTEL_TDX_GUEST"] == "y" and "dm_verity" in image.initrd_modules
    checks = {check["id"]: check for check in json.loads((debian13_build / "validation.json").read_text())["checks"]}
    assert checks["root.verity"]["status"] == "pass"
    assert f"root hash {arguments['roothash']} = roothash=" in checks["root.verity"]["evidence"]


def test_debian_13_boots_from_its_verity_root_to_the_selfcheck(debian13_image, tmp_path):
    log = tmp_path / "console.log"
    result = run_cli("boot", debian13_image, "--json", "--console-log", log, "--timeout", 900)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["selfcheck"]["kernel"].startswith("6.12")
    console = log.read_text(errors="replace")
    assert "systemd-veritysetup@root" in console and "EXT4-fs (dm-0): mounted filesystem" in console


def tampered_copy(image: Path, workdir: Path) -> Path:
    """A raw copy of ``image`` with one byte of TAMPERED_FILE's data changed in place."""
    raw = workdir / "tampered.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", image, raw], check=True)
    disk = open_disk(raw)
    try:
        partition, root = Inspection(disk).root_partition
        offset = partition.offset + root.data_offset(TAMPERED_FILE, 100)
    finally:
        disk.close()
    with raw.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))
    return raw


@pytest.fixture(scope="module")
def tampered(debian13_image, tmp_path_factory) -> Path:
    return tampered_copy(debian13_image, tmp_path_factory.mktemp("tampered"))


def test_one_changed_byte_fails_validation_offline(tampered):
    result = run_cli("validate", tampered, "--json")
    assert result.returncode == 1, result.stderr
    failed = {check["id"]: check for check in json.loads(result.stdout)["checks"] if check["status"] != "pass"}
    assert list(failed) == ["root.verity"]
    assert "does not match the hash tree" in failed["root.verity"]["evidence"]


def test_one_changed_byte_fails_the_boot_with_a_verity_error(tampered, tmp_path):
    log = tmp_path / "console.log"
    result = run_cli("boot", tampered, "--console-log", log, "--timeout", 900)
    assert result.returncode == 1, result.stderr
    assert "failed its hash check" in result.stderr
    assert "device-mapper: verity:" in log.read_text(errors="replace")
    assert "TDX-SELFCHECK" not in log.read_text(errors="replace")
