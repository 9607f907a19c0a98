"""The validator's own ext4 and FAT readers against file systems made by mkfs from a known tree."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from imagebuilder.image.disk import RawDisk
from imagebuilder.image.filesystems import Ext4, Fat, FilesystemError
from tests.test_validate_checks import sh


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Nested directories, a large (hash-indexed) directory, a sparse and a multi-extent file,
    absolute and relative symbolic links, a link to a directory and a long link target."""
    root = tmp_path_factory.mktemp("tree")
    (root / "usr/lib/modules/6.12/kernel").mkdir(parents=True)
    (root / "usr/lib/modules/6.12/kernel/virtio_net.ko").write_bytes(os.urandom(300_000))
    (root / "etc/many").mkdir(parents=True)
    for number in range(600):
        (root / f"etc/many/file-{number:04d}.conf").write_text(f"{number}\n")
    with open(root / "etc/sparse", "wb") as sparse:
        sparse.seek(5 * 2**20)
        sparse.write(b"end")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    os.symlink("usr/lib", root / "lib")
    os.symlink("/etc/passwd", root / "etc/passwd-link")
    os.symlink("../etc/passwd", root / "usr/passwd-relative")
    deep = root / ("d" * 70)
    deep.mkdir()
    (deep / "target").write_text("deep\n")
    os.symlink(f"/{'d' * 70}/target", root / "etc/slow-link")  # > 60 bytes: stored in a block
    return root


@pytest.fixture(scope="module", params=["4096", "1024"], ids=["4k blocks", "1k blocks"])
def ext4(tree, tmp_path_factory, request) -> Ext4:
    image = tmp_path_factory.mktemp("ext4") / "root.img"
    sh("mkfs.ext4", "-q", "-F", "-b", request.param, "-d", tree, image, "64M")
    return Ext4(RawDisk(image), 0)


def test_ext4_files_read_back_byte_for_byte(ext4, tree):
    for path in ("usr/lib/modules/6.12/kernel/virtio_net.ko", "etc/many/file-0599.conf", "etc/sparse", "etc/passwd"):
        assert ext4.read("/" + path) == (tree / path).read_bytes(), path


def test_ext4_follows_symbolic_links_as_the_kernel_does(ext4, tree):
    module = (tree / "usr/lib/modules/6.12/kernel/virtio_net.ko").read_bytes()
    assert ext4.read("/lib/modules/6.12/kernel/virtio_net.ko") == module
    assert ext4.read("/etc/passwd-link") == ext4.read("/usr/passwd-relative") == (tree / "etc/passwd").read_bytes()
    assert ext4.read("/etc/slow-link") == b"deep\n"
    assert not ext4.lookup("/etc/passwd-link").is_file  # lookup itself does not follow
    assert ext4.read("/etc/absent") is None and ext4.read("/etc/passwd/below") is None


def test_ext4_lists_a_hash_indexed_directory_completely(ext4, tree):
    listing = ext4.listdir("/etc/many")
    assert sorted(listing) == sorted(os.listdir(tree / "etc/many"))
    assert listing["file-0042.conf"].size == 3 and listing["file-0042.conf"].is_file
    assert ext4.listdir("/lib/modules")["6.12"].is_dir
    assert ext4.listdir("/etc/passwd") is None


def test_ext4_features_the_reader_does_not_know_are_refused(tmp_path):
    image = tmp_path / "inline.img"
    sh("mkfs.ext4", "-q", "-F", "-O", "inline_data", image, "16M")
    with pytest.raises(FilesystemError, match="unsupported ext4 features"):
        Ext4(RawDisk(image), 0)


@pytest.mark.parametrize("fat_bits", ["12", "16", "32"])
def test_fat_reads_long_and_short_names_case_insensitively(tmp_path, fat_bits):
    image, payload = tmp_path / "esp.img", os.urandom(70_000)
    sh("mkfs.fat", "-F", fat_bits, "-C", image, str({"12": 4, "16": 20, "32": 40}[fat_bits] * 1024))
    (tmp_path / "shimx64.efi").write_bytes(payload)
    (tmp_path / "grub.cfg").write_text("configfile (hd0,gpt2)/boot/grub/grub.cfg\n")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for command in (["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"],
                    ["mcopy", "-i", image, tmp_path / "shimx64.efi", "::/EFI/BOOT/BOOTX64.EFI"],
                    ["mcopy", "-i", image, tmp_path / "grub.cfg", "::/EFI/BOOT/A long name.cfg"]):
        subprocess.run([str(arg) for arg in command], check=True, capture_output=True, env=env)
    fat = Fat(RawDisk(image), 0)
    assert fat.read("/efi/boot/bootx64.efi") == payload
    assert fat.read("/EFI/BOOT/a LONG name.cfg") == (tmp_path / "grub.cfg").read_bytes()
    assert fat.exists("/EFI/BOOT") and not fat.exists("/EFI/BOOT/MMX64.EFI")
    assert fat.read("/EFI") is None


def test_a_sparse_raw_disk_reads_its_holes_as_zeros_and_its_data_as_written(tmp_path):
    """RawDisk answers holes without reading them; every read equals the file's bytes."""
    path = tmp_path / "sparse.raw"
    with path.open("wb") as file:
        file.truncate(8 * 2**20)
        for offset, data in ((4096, b"first"), (3 * 2**20 + 1, b"middle"), (8 * 2**20 - 3, b"end")):
            file.seek(offset)
            file.write(data)
    whole = path.read_bytes()
    disk = RawDisk(path)
    try:
        for offset, length in ((0, 8 * 2**20), (4090, 20), (2**20, 2**20), (3 * 2**20, 4096),
                               (8 * 2**20 - 10, 100), (8 * 2**20, 10)):
            assert disk.read(offset, length) == whole[offset:offset + length], (offset, length)
    finally:
        disk.close()
