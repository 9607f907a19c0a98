"""uki.sh picks the kernel and initrd by each distribution's names: Debian's files, SUSE 16's
links into /usr/lib/modules and its initrd-VERSION.  The hook runs here against an image tree
with stand-ins for the disk tools KIWI's build host answers (lsblk, blkid, findmnt) and for the
chrooted ukify; the real builds (tests/integration, the workflow's leap 16.0) run it for real."""

import os
import subprocess
from pathlib import Path

import pytest

from imagebuilder.build.compose import UKI_HOOK
from imagebuilder.core.paths import SHARED_OVERLAY

SUSE_VERSION = "6.12.0-160000.5-default"
DEBIAN_VERSION = "6.12.118+deb13-amd64"
FAKES = {
    # the root partition's disk, and the partitions' GPT names and UUIDs, as KIWI's disk has them
    "lsblk": 'echo loop9',
    "blkid": 'case "$*" in *PART_ENTRY_NAME*) echo p.UEFI ;; *) echo 0d811618-a200-4154-acb9-85bb920fc5b4 ;; esac',
    "findmnt": 'echo "$FAKE_ESP_DIR"',  # the EFI partition's mount point
    # ukify in the image root: records what it was given and writes the --output it was named
    "chroot": 'root=$1; shift; echo "$@" > "$FAKE_UKIFY_ARGS"; '
              'for last; do :; done; echo UKI > "$root$last"',
}


def suse_tree(root: Path) -> None:
    """kernel-default on SUSE 16: /usr/lib/modules/V/vmlinuz, /boot/vmlinuz-V a relative link
    to it (its post script), /boot/vmlinuz a link without version, a hidden .hmac; dracut's
    initrd-V and the /boot/initrd link."""
    modules = root / "usr/lib/modules" / SUSE_VERSION
    modules.mkdir(parents=True)
    (modules / "vmlinuz").write_bytes(b"kernel")
    boot = root / "boot"
    boot.mkdir()
    (boot / f"vmlinuz-{SUSE_VERSION}").symlink_to(f"../usr/lib/modules/{SUSE_VERSION}/vmlinuz")
    (boot / "vmlinuz").symlink_to(f"vmlinuz-{SUSE_VERSION}")
    (boot / f".vmlinuz-{SUSE_VERSION}.hmac").write_text("hmac")
    (boot / f"initrd-{SUSE_VERSION}").write_bytes(b"initrd")
    (boot / "initrd").symlink_to(f"initrd-{SUSE_VERSION}")


def debian_tree(root: Path) -> None:
    boot = root / "boot"
    boot.mkdir(parents=True)
    (boot / f"vmlinuz-{DEBIAN_VERSION}").write_bytes(b"kernel")
    (boot / f"initramfs-{DEBIAN_VERSION}.img").write_bytes(b"initrd")


def run_hook(tmp_path: Path, tree) -> tuple[subprocess.CompletedProcess, Path]:
    root, esp, fakes = tmp_path / "root", tmp_path / "esp", tmp_path / "bin"
    for directory in (root, esp, fakes):
        directory.mkdir(exist_ok=True)
    (root / "var/tmp").mkdir(parents=True)
    tree(root)
    for name, body in FAKES.items():
        (fakes / name).write_text(f"#!/bin/sh\n{body}\n")
        (fakes / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{fakes}:{os.environ['PATH']}", kiwi_cmdline="console=ttyS0,115200",
               FAKE_ESP_DIR=str(esp), FAKE_UKIFY_ARGS=str(tmp_path / "ukify-args"))
    result = subprocess.run(["bash", SHARED_OVERLAY / UKI_HOOK, "/dev/loop9", "/dev/loop9p3"],
                            cwd=root, env=env, capture_output=True, text=True)
    return result, esp


@pytest.mark.parametrize("tree, kernel, initrd, version", [
    (suse_tree, f"vmlinuz-{SUSE_VERSION}", f"initrd-{SUSE_VERSION}", SUSE_VERSION),
    (debian_tree, f"vmlinuz-{DEBIAN_VERSION}", f"initramfs-{DEBIAN_VERSION}.img", DEBIAN_VERSION)])
def test_the_hook_hands_ukify_the_distributions_kernel_and_initrd(tmp_path, tree, kernel, initrd, version):
    result, esp = run_hook(tmp_path, tree)
    assert result.returncode == 0, result.stderr
    words = (tmp_path / "ukify-args").read_text().split()
    assert words[:1] == ["ukify"]
    assert [words[words.index(option) + 1] for option in ("--linux", "--initrd", "--uname")] == [
        f"/boot/{kernel}", f"/boot/{initrd}", version]
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_text() == "UKI\n"
    assert not (tmp_path / "root/var/tmp/tdx-image-uki.efi").exists()  # nothing left in the image


def test_two_initrds_for_one_kernel_stop_the_hook(tmp_path):
    def both(root):
        suse_tree(root)
        (root / "boot" / f"initramfs-{SUSE_VERSION}.img").write_bytes(b"another")
    result, esp = run_hook(tmp_path, both)
    assert result.returncode == 1
    assert f"expected one initrd for {SUSE_VERSION}" in result.stderr
    assert not (esp / "EFI").exists()
