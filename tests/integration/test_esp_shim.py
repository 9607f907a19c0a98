"""The ESP fallback on a real loop device: a vfat "mount" without kernel vfat support."""

import os
import subprocess

import pytest

from imagebuilder.build import cleanup
from imagebuilder.build.kiwi import HOSTSHIM, KiwiInvocation

pytestmark = pytest.mark.integration


@pytest.fixture
def shim_env(tmp_path):
    run = KiwiInvocation(kiwi="kiwi-ng", description=tmp_path, target_dir=tmp_path, cache_dir=tmp_path,
                  repositories=[], esp_fallback_dir=tmp_path / "esp")
    run.prepare_esp_fallback()
    return run.environment()


@pytest.fixture
def fat_loop(tmp_path):
    image = tmp_path / "esp.img"
    subprocess.run(["truncate", "-s", "32M", image], check=True)
    subprocess.run(["mkfs.vfat", "-n", "EFI", image], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", image, HOSTSHIM, "::/preexisting"], check=True,
                   env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    device = subprocess.run(["losetup", "--find", "--show", image], check=True, capture_output=True,
                            text=True).stdout.strip()
    yield device
    subprocess.run(["losetup", "--detach", device], check=True)


def test_vfat_round_trip_through_the_shim(tmp_path, shim_env, fat_loop):
    point = tmp_path / "mnt"
    point.mkdir()

    def shim(*args, check=True):
        return subprocess.run(list(args), env=shim_env, check=check, capture_output=True, text=True)

    assert shim("mountpoint", "-q", point, check=False).returncode != 0
    shim("mount", "-t", "vfat", fat_loop, point)
    assert (point / "preexisting").read_bytes() == HOSTSHIM.read_bytes()  # FAT content staged
    assert shim("mountpoint", "-q", point).returncode == 0
    (point / "EFI" / "BOOT").mkdir(parents=True)
    (point / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"MZ" + b"\0" * 4096)
    (point / "preexisting").unlink()
    shim("umount", "-l", point)
    assert list(point.iterdir()) == []  # like an unmount: the directory is empty again
    listing = subprocess.run(["mdir", "-/", "-b", "-i", fat_loop, "::/"], env=shim_env,
                             check=True, capture_output=True, text=True).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing.splitlines()
    assert "preexisting" not in listing  # deletions reach the FAT too
    assert shim("mountpoint", "-q", point, check=False).returncode != 0
    assert cleanup.leftovers(point) == ([], [])


def test_other_filesystems_pass_through_to_the_real_mount(tmp_path, shim_env):
    image = tmp_path / "root.ext4"
    subprocess.run(["truncate", "-s", "16M", image], check=True)
    subprocess.run(["mkfs.ext4", "-q", image], check=True)
    point = tmp_path / "root"
    point.mkdir()
    subprocess.run(["mount", "-o", "loop", image, point], env=shim_env, check=True)
    try:
        assert any(p == str(point) for _, p in cleanup.mounts())  # a real kernel mount
        assert subprocess.run(["mountpoint", "-q", point], env=shim_env).returncode == 0
    finally:
        subprocess.run(["umount", point], env=shim_env, check=True)
    assert cleanup.leftovers(tmp_path) == ([], [])
