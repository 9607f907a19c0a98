"""Host checks and publishing: the parts of a build that decide what a user finds on disk."""

import json
import subprocess
from collections import namedtuple

import pytest

from tests.conftest import FakeHost
from imagebuilder.host import buildhost, requirements
from imagebuilder.build import publish
from imagebuilder.core.errors import BuildError, HostError

Usage = namedtuple("Usage", "total used free")


def test_vfat_support_is_read_from_the_kernel(tmp_path, monkeypatch):
    with_vfat = tmp_path / "with"
    with_vfat.write_text("nodev\tproc\n\text4\n\tvfat\n")
    without = tmp_path / "without"
    without.write_text("nodev\tproc\n\text4\n\tfuseblk\n")
    assert buildhost.kernel_mounts_vfat(str(with_vfat))
    monkeypatch.setattr(buildhost.platform, "release", lambda: "no-such-kernel")
    assert not buildhost.kernel_mounts_vfat(str(without))


class LowOnSpace(FakeHost):
    def free_bytes(self, path):
        self.asked = path
        return 2 * 1024**3


def test_free_space_is_checked_on_the_nearest_existing_parent(tmp_path):
    host = LowOnSpace()
    with pytest.raises(HostError, match=r"only 2.0 GiB free .* needs 8 GiB"):
        requirements.require("free disk", context=requirements.Context(host, build_dir=tmp_path / "not" / "yet"))
    assert host.asked == tmp_path


def test_missing_tools_name_their_packages():
    host = FakeHost(missing={"mcopy"}, mounts_vfat=False, family="debian")
    with pytest.raises(HostError, match="mcopy") as raised:
        requirements.require("vfat (EFI partition)", context=requirements.Context(host))
    assert raised.value.hint == "apt-get install mtools"


def test_not_root_is_refused():
    with pytest.raises(HostError, match="needs root"):
        requirements.require("root", context=requirements.Context(FakeHost(is_root=False)))


def kiwi_target(tmp_path, disks=("disk_format_image", "disk_image")):
    target = tmp_path / "kiwi"
    target.mkdir()
    results = {}
    for key, name in (("disk_format_image", "img.qcow2"), ("disk_image", "img.raw"),
                      ("image_packages", "img.packages")):
        if key.startswith("disk") and key not in disks:
            continue
        (target / name).write_text(name)
        results[key] = {"filename": str(target / name), "compress": False, "shasum": True,
                        "use_for_bundle": True}
    import json
    (target / "kiwi.result.json").write_text(json.dumps(results))
    return target


def test_collect_moves_results_and_rewrites_the_result_file(tmp_path):
    import json

    publish_dir = tmp_path / "publish"
    publish_dir.mkdir()
    published = publish.collect(kiwi_target(tmp_path), publish_dir)
    assert sorted(p.name for p in publish_dir.iterdir()) == ["img.packages", "img.qcow2",
                                                              "kiwi.result.json"]
    assert published["image"] == published["disk_format_image"] == publish_dir / "img.qcow2"
    result = json.loads((publish_dir / "kiwi.result.json").read_text())
    assert result["disk_format_image"]["filename"] == "img.qcow2"
    assert result["disk_image"]["filename"] is None  # the raw disk is not published
    publish.write_checksum(published["disk_format_image"])
    subprocess.run(["sha256sum", "-c", "img.qcow2.sha256"], cwd=publish_dir, check=True,
                   capture_output=True)


def test_a_raw_build_publishes_the_raw_disk(tmp_path):
    publish_dir = tmp_path / "publish"
    publish_dir.mkdir()
    published = publish.collect(kiwi_target(tmp_path, disks=("disk_image",)), publish_dir)
    assert published["image"] == publish_dir / "img.raw"
    assert sorted(p.name for p in publish_dir.iterdir()) == ["img.packages", "img.raw",
                                                              "kiwi.result.json"]


def test_collect_without_disk_image_is_a_build_error(tmp_path):
    with pytest.raises(BuildError, match="names no disk image"):
        publish.collect(kiwi_target(tmp_path, disks=()), tmp_path)


def test_collect_without_package_list_is_a_build_error(tmp_path):
    target = kiwi_target(tmp_path)
    results = json.loads((target / "kiwi.result.json").read_text())
    del results["image_packages"]
    (target / "kiwi.result.json").write_text(json.dumps(results))
    with pytest.raises(BuildError, match="names no package list"):
        publish.collect(target, tmp_path)


def test_replace_directory_swaps_in_the_new_set_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.qcow2").write_text("old")
    new = tmp_path / "staging" / "publish"
    new.mkdir(parents=True)
    (new / "new.qcow2").write_text("new")
    publish.replace_directory(new, out)
    assert [p.name for p in out.iterdir()] == ["new.qcow2"]
    assert list((tmp_path / "staging").iterdir()) == []


def test_missing_kiwi_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(buildhost.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(buildhost.shutil, "which", lambda tool: None)
    with pytest.raises(HostError, match="kiwi-ng is not installed") as raised:
        requirements.require("kiwi")
    assert "setup.sh" in raised.value.hint


def test_wrong_kiwi_series_is_refused():
    with pytest.raises(HostError, match="kiwi 9.24.48 found"):
        requirements.require("kiwi", context=requirements.Context(FakeHost(kiwi_version="9.24.48")))
