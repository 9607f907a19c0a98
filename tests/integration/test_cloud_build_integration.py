"""`build debian --cloud gcp|azure` for real: the published artifacts are what the clouds import
(read with tar, gzip and qemu-img, not with the code under test), their initrds carry the
cloud's drivers, and build.json says what to run next (issue 19's build half)."""

import gzip
import json
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from imagebuilder.distros.clouds import AZURE, GCP, GIB, MIB
from imagebuilder.image.disk import open_disk
from imagebuilder.image.inspection import Inspection

from .conftest import published_image

pytestmark = pytest.mark.integration

TAR_BLOCK = 512
GNU_MAGIC = b"ustar  \0"  # GNU tar's header magic (POSIX ustar has "ustar\0" "00")
VHD_COOKIE, VHD_FIXED = b"conectix", 2  # Microsoft's VHD specification: the footer, disk type 2


def initrd_modules(image: Path) -> set[str]:
    with closing(open_disk(image)) as disk:  # a tar's disk.raw is a temporary file until closed
        return Inspection(disk).initrd_modules


def test_the_gcp_image_is_a_gnu_tar_gz_holding_only_a_whole_gib_disk_raw(debian_gcp_build, tmp_path):
    image = published_image(debian_gcp_build)
    assert image.name.endswith(GCP.artifact_suffix)
    listing = subprocess.run(["tar", "-tvzf", image], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert len(listing) == 1 and listing[0].split()[-1] == "disk.raw", listing
    size = int(listing[0].split()[2])
    assert size % GIB == 0 and size == 4 * GIB  # the description's 4G, verity's partition inside
    with gzip.open(image) as archive:
        header = archive.read(TAR_BLOCK)
    assert header[257:265] == GNU_MAGIC
    assert header[156:157] == b"S"  # a sparse member: the upload carries no runs of zeros

    subprocess.run(["tar", "-xzf", image, "-C", tmp_path], check=True)
    assert (tmp_path / "disk.raw").stat().st_size == size
    assert set(GCP.initrd_drivers) <= initrd_modules(tmp_path / "disk.raw")


def test_the_gcp_build_booted_on_nvme_and_says_how_to_import_and_launch_it(debian_gcp_build):
    record = json.loads((debian_gcp_build / "build.json").read_text())
    assert record["inputs"]["cloud"] == "gcp"
    assert record["boot_test"] is not None and record["cloud"]["boot_test_not_run"] is None
    commands = [step["command"] for step in record["cloud"]["next_steps"]]
    assert commands[0] == f"gcloud storage cp {record['image']} gs://BUCKET/{record['image']}"
    assert "--guest-os-features=UEFI_COMPATIBLE,GVNIC,TDX_CAPABLE" in commands[1]
    assert "--confidential-compute-type=TDX" in commands[2]
    packages = debian_gcp_build / f"{record['image'].removesuffix('.tar.gz')}.packages"
    assert "cloud-init|" in packages.read_text()


def test_the_azure_image_is_a_fixed_vhd_of_whole_mib(debian_azure_build, tmp_path):
    image = published_image(debian_azure_build)
    assert image.name.endswith(AZURE.artifact_suffix)
    # qemu's probe takes a fixed VHD for raw (it has no leading copy of its footer): its vpc
    # driver, named, reads the footer.
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "vpc", "--output=json", image],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "vpc"
    with open(image, "rb") as vhd:
        vhd.seek(-TAR_BLOCK, 2)
        footer = vhd.read(TAR_BLOCK)
    assert footer[:8] == VHD_COOKIE
    assert int.from_bytes(footer[60:64], "big") == VHD_FIXED
    current_size = int.from_bytes(footer[48:56], "big")
    # force_size: the virtual size is the raw disk's, not qemu-img's CHS rounding of it.
    assert current_size == image.stat().st_size - TAR_BLOCK == info["virtual-size"] == 4 * GIB
    assert current_size % MIB == 0

    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", image, raw], check=True)
    assert set(AZURE.initrd_drivers) <= initrd_modules(raw)


def test_the_azure_build_says_why_it_was_not_booted_and_how_to_publish_it(debian_azure_build):
    record = json.loads((debian_azure_build / "build.json").read_text())
    assert record["inputs"]["cloud"] == "azure"
    assert record["boot_test"] is None
    assert "cannot be emulated by QEMU" in record["cloud"]["boot_test_not_run"]
    assert "cannot be emulated by QEMU" in (debian_azure_build.parent / "build.stderr").read_text()
    upload, definition, version, launch = [step["command"] for step in record["cloud"]["next_steps"]]
    assert f"--file {record['image']}" in upload and "--type page" in upload
    assert "SecurityType=ConfidentialVMSupported" in definition
    assert record["image"] in version and "--security-type ConfidentialVM" in launch
