"""The readers of the clouds' upload formats against what GNU tar, gzip and qemu-img make and say:
a GCE tar's members and its disk.raw unpacked with its holes, a VHD's footer."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from imagebuilder.core.errors import InputError
from imagebuilder.image.cloudformats import TarMember, read_vhd_footer, unpack_gce_tar
from imagebuilder.image.disk import GCE_TAR, VHD, image_format, open_disk, read_gpt
from tests.test_cloud_checks import fixed_vhd, gce_tar, grown_to
from tests.test_validate_checks import sh


BIG = 96 * 2**20


@pytest.fixture(scope="module")
def big_raw(synthetic_image, tmp_path_factory) -> Path:
    """The synthetic disk grown to 96 MiB: its 48 MiB (mostly zeros), then a hole."""
    raw = tmp_path_factory.mktemp("big") / "disk.raw"
    sh("cp", "--sparse=always", synthetic_image, raw)
    return grown_to(raw, BIG)


def test_a_gnu_sparse_disk_raw_unpacks_byte_for_byte_with_its_holes(big_raw, tmp_path):
    tar = gce_tar(big_raw, tmp_path, beside=("manifest.json",))
    listed = subprocess.run(["tar", "tvf", tar], capture_output=True, text=True, check=True).stdout.splitlines()
    unpacked = tmp_path / "unpacked.raw"

    read = unpack_gce_tar(tar, unpacked)

    assert [(member.name, member.size) for member in read.members] == [
        (line.split()[-1], int(line.split()[2])) for line in listed]  # what GNU tar says
    assert read.members[0] == TarMember("disk.raw", "GNU sparse file", "gnu", BIG)
    assert read.members[1].kind == "file" and read.disk is read.members[0]
    assert unpacked.stat().st_size == BIG and unpacked.read_bytes() == big_raw.read_bytes()
    assert unpacked.stat().st_blocks <= big_raw.stat().st_blocks < BIG // 512 // 2  # holes kept


@pytest.mark.parametrize("tar_format, expected", [(tarfile.GNU_FORMAT, "gnu"), (tarfile.USTAR_FORMAT, "ustar"),
                                                  (tarfile.PAX_FORMAT, "pax")])
def test_each_members_header_format_is_read(tmp_path, tar_format, expected):
    """A plain (not sparse) disk.raw as tarfile writes it: its run of zeros is not written either."""
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"data" * 2**18 + bytes(4 * 2**20) + b"tail" * 2**18)  # 1 MiB, 4 MiB of zeros, 1 MiB
    tar = tmp_path / "image.tar.gz"
    with tarfile.open(tar, "w:gz", format=tar_format, compresslevel=1) as archive:
        info = archive.gettarinfo(raw, arcname="disk.raw")
        if tar_format == tarfile.PAX_FORMAT:
            info.pax_headers = {"comment": "a PAX extended header"}
        with raw.open("rb") as data:
            archive.addfile(info, data)
    unpacked = tmp_path / "unpacked.raw"
    read = unpack_gce_tar(tar, unpacked)
    assert read.members == (TarMember("disk.raw", "file", expected, raw.stat().st_size),)
    assert unpacked.read_bytes() == raw.read_bytes()
    assert unpacked.stat().st_blocks * 512 <= 3 * 2**20  # the zeros are a hole


def test_a_misnamed_disk_is_still_read_and_a_tar_without_a_file_refused(synthetic_image, tmp_path):
    read = unpack_gce_tar(gce_tar(synthetic_image, tmp_path, member="image.raw"), tmp_path / "a.raw")
    assert read.disk.name == "image.raw" and (tmp_path / "a.raw").read_bytes() == synthetic_image.read_bytes()
    tar = tmp_path / "empty.tar.gz"
    with tarfile.open(tar, "w:gz") as archive:
        archive.addfile(_directory("images"))
    with pytest.raises(InputError, match=r"a gzipped tar without a disk \(members: images\)"):
        unpack_gce_tar(tar, tmp_path / "b.raw")


def _directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_a_truncated_tar_is_an_input_error_that_leaves_no_temporary_file(big_raw, tmp_path, monkeypatch):
    tar = gce_tar(big_raw, tmp_path)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(tar.read_bytes()[:tar.stat().st_size // 2])
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temporary))
    with pytest.raises(InputError, match="not a readable gzipped tar"):
        open_disk(truncated)
    assert list(temporary.iterdir()) == []
    disk = open_disk(tar)  # an intact one: unpacked there while open, removed when closed
    assert [path.name[:14] for path in temporary.iterdir()] == ["tdx-image-gce-"]
    disk.close()
    assert list(temporary.iterdir()) == []


def test_a_fixed_vhd_footer_agrees_with_qemu_img_and_its_disk_is_the_data_before_it(synthetic_image, tmp_path):
    vhd = fixed_vhd(synthetic_image, tmp_path)
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "vpc", "--output=json", vhd],
                                     capture_output=True, text=True, check=True).stdout)
    footer = read_vhd_footer(vhd)
    assert footer is not None and footer.current_size == info["virtual-size"] == synthetic_image.stat().st_size
    assert (footer.type_name, footer.creator, footer.checksum_ok) == ("fixed", "qem2", True)
    assert footer.file_size == vhd.stat().st_size == footer.current_size + 512
    assert image_format(vhd) == VHD  # qemu-img alone would call it raw: a fixed VHD has no header
    disk = open_disk(vhd)
    assert disk.size == footer.current_size and disk.packing == footer and read_gpt(disk).valid
    disk.close()
    assert read_vhd_footer(synthetic_image) is None


def test_a_dynamic_vhd_is_refused_with_the_way_to_a_fixed_one(synthetic_image, tmp_path):
    vhd = fixed_vhd(synthetic_image, tmp_path, "subformat=dynamic")
    with pytest.raises(InputError, match="a dynamic VHD") as refused:
        image_format(vhd)
    assert "subformat=fixed,force_size" in refused.value.hint


def test_a_tar_is_told_by_its_gzip_magic(synthetic_image, tmp_path):
    assert image_format(gce_tar(synthetic_image, tmp_path)) == GCE_TAR
