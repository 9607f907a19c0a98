"""What `validate --cloud gcp|azure` adds: each cloud check against a small synthetic image
broken (or packed) in exactly its way.  The images are the validator's synthetic disk
(tests/test_validate_checks.py) with the initrd a cloud needs written in with debugfs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagebuilder import cli
from imagebuilder.distros.clouds import AZURE, CLOUDS, GCP, GIB, MIB, QEMU, Cloud
from imagebuilder.image.cloudformats import VHD_FOOTER_SIZE, vhd_checksum
from imagebuilder.core.results import Result
from imagebuilder.validate import CHECKS, validate_image
from tests.test_validate_checks import KERNEL, boot_file, cpio_gzip, ext4_edit, ext4_write, sh, statuses

# Where each driver lives below the module tree (drivers/nvme/host/nvme.ko, ...).
DRIVER_PATHS = {"virtio_blk": "block", "virtio_net": "net", "nvme": "nvme/host", "nvme_core": "nvme/host",
                "gve": "net/ethernet/google/gve",
                "hv_vmbus": "hv", "hv_storvsc": "scsi", "hv_netvsc": "net/hyperv"}


def with_initrd_drivers(raw: Path, drivers: tuple[str, ...]) -> None:
    """Replace the image's initrd by one carrying ``drivers`` as (dummy) module files."""
    tree = {f"usr/lib/modules/{KERNEL}/kernel/drivers/{DRIVER_PATHS[name]}/{name}.ko.xz": b"module"
            for name in drivers}
    (raw.parent / "initrd").mkdir(exist_ok=True)
    ext4_write(raw, boot_file(raw, "initrd"), cpio_gzip(tree or {"init": b"#!/bin/sh\n"}, raw.parent / "initrd"))


def image_for(cloud: Cloud, synthetic_image: Path, directory: Path) -> Path:
    """The synthetic image with the initrd ``cloud`` needs (and virtio, as a build keeps it)."""
    raw = directory / f"{cloud.name}.raw"
    sh("cp", "--sparse=always", synthetic_image, raw)
    with_initrd_drivers(raw, ("virtio_blk", "virtio_net", *cloud.initrd_drivers))
    return raw


def grown_to(raw: Path, size: int) -> Path:
    """``raw`` made ``size`` bytes (a hole at the end), its backup GPT moved to the new end."""
    with raw.open("r+b") as disk:
        disk.truncate(size)
    sh("sfdisk", "-q", "--relocate", "gpt-bak-std", raw)
    return raw


def gce_tar(raw: Path, directory: Path, *tar_options: str, member: str = "disk.raw",
            beside: tuple[str, ...] = ()) -> Path:
    """``raw`` packed as KIWI's gce format does (tar --format=gnu -cSz), as ``member``, with the
    files named in ``beside`` next to it (made with some text)."""
    work = directory / f"tar-{member}-{len(list(directory.glob('tar-*')))}"
    work.mkdir()
    sh("cp", "--sparse=always", raw, work / member)
    for name in beside:
        (work / name).write_text('{"licenses": ["test"]}\n')
    tar = work / "image.tar.gz"
    sh("tar", "-C", work, *(tar_options or ("--format=gnu",)), "-cSzf", tar, member, *beside)
    return tar


def fixed_vhd(image: Path, directory: Path, options: str = "subformat=fixed,force_size", source: str = "raw") -> Path:
    """``image`` (of qemu format ``source``) as a fixed VHD, written by qemu-img as KIWI's
    vhd-fixed format does."""
    vhd = directory / f"{image.stem}.{len(list(directory.glob('*.vhd')))}.vhd"
    sh("qemu-img", "convert", "-f", source, "-O", "vpc", "-o", options, image, vhd)
    return vhd


def edited_footer(vhd: Path, edit: Callable[[bytearray], None], checksum: bool = True) -> Path:
    """``vhd`` with its footer edited (and its checksum made to match, unless not asked)."""
    with vhd.open("r+b") as file:
        file.seek(-VHD_FOOTER_SIZE, 2)
        footer = bytearray(file.read())
        edit(footer)
        if checksum:
            footer[64:68] = vhd_checksum(bytes(footer)).to_bytes(4, "big")
        file.seek(-VHD_FOOTER_SIZE, 2)
        file.write(footer)
    return vhd


@pytest.fixture(scope="module")
def gcp_raw(synthetic_image, tmp_path_factory) -> Path:
    """The synthetic image with the gcp drivers in its initrd, grown to 1 GiB (mostly a hole)."""
    directory = tmp_path_factory.mktemp("gcp")
    return grown_to(image_for(GCP, synthetic_image, directory), GIB)


@pytest.fixture(scope="module")
def azure_raw(synthetic_image, tmp_path_factory) -> Path:
    return image_for(AZURE, synthetic_image, tmp_path_factory.mktemp("azure"))


def packed(cloud: Cloud, raw: Path, directory: Path) -> Path:
    """``raw`` in the format ``cloud`` imports, made as KIWI makes it."""
    return gce_tar(raw, directory) if cloud is GCP else fixed_vhd(raw, directory)


@pytest.fixture
def cloud_raws(gcp_raw, azure_raw) -> dict[str, Path]:
    return {GCP.name: gcp_raw, AZURE.name: azure_raw}


@pytest.mark.parametrize("cloud", [GCP, AZURE], ids=lambda cloud: cloud.name)
def test_an_image_made_for_the_cloud_passes_and_the_report_names_the_cloud(cloud, cloud_raws, tmp_path):
    report = validate_image(packed(cloud, cloud_raws[cloud.name], tmp_path), cloud=cloud)
    assert statuses(report) == {}, json.dumps(report.to_dict(), indent=1)
    assert report.to_dict()["cloud"] == cloud.name
    ids = {check.id for check in report.checks}
    assert {check.id for check in CHECKS if check.clouds == (cloud.name,)} <= ids
    assert "kernel.virtio" not in ids  # QEMU's only
    drivers = next(check for check in report.checks if check.id == f"{cloud.name}.initrd-drivers")
    assert all(f"{driver} in the initrd" in drivers.detail for driver in cloud.initrd_drivers)


@pytest.mark.parametrize("cloud", [GCP, AZURE], ids=lambda cloud: cloud.name)
def test_todays_qemu_image_packed_for_a_cloud_is_failed_for_the_drivers_its_initrd_lacks(cloud, synthetic_image, tmp_path):
    raw = tmp_path / "qemu.raw"
    sh("cp", "--sparse=always", synthetic_image, raw)
    report = validate_image(packed(cloud, grown_to(raw, GIB) if cloud is GCP else raw, tmp_path), cloud=cloud)
    assert statuses(report) == {f"{cloud.name}.initrd-drivers": "fail"}
    failed = report.failed[0].detail
    assert failed == "the kernel cannot load: " + ", ".join(f"{driver} (neither in the initrd nor built in)"
                                                            for driver in cloud.initrd_drivers)
    assert validate_image(synthetic_image).ok  # and still passes for QEMU


@dataclass(frozen=True)
class CloudBreakage:
    name: str
    cloud: Cloud
    make: Callable[[Path, Path], Path]  # (the cloud's raw image, a work directory) -> the mutant
    expected: dict[str, str]  # check id -> status; every other check must pass
    evidence: str = ""  # in the evidence of the failed check named first in expected


def _initrd_without(cloud: Cloud, driver: str) -> Callable[[Path, Path], Path]:
    def make(raw: Path, work: Path) -> Path:
        copy = work / "copy.raw"
        sh("cp", "--sparse=always", raw, copy)
        with_initrd_drivers(copy, tuple(name for name in ("virtio_blk", "virtio_net", *cloud.initrd_drivers)
                                        if name != driver))
        return packed(cloud, copy, work)
    return make


def sparse_copy(raw: Path, copy: Path) -> Path:
    sh("cp", "--sparse=always", raw, copy)
    return copy


def qcow2(raw: Path, image: Path) -> Path:
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, image)
    return image


def _nvme_without_its_core(raw: Path, work: Path) -> Path:
    """depmod's modules.dep says nvme needs nvme-core; the initrd carries nvme alone."""
    copy = sparse_copy(raw, work / "copy.raw")
    ext4_write(copy, f"/usr/lib/modules/{KERNEL}/modules.dep",
               b"kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz\n"
               b"kernel/drivers/nvme/host/nvme-core.ko.xz:\nkernel/drivers/net/ethernet/google/gve/gve.ko.xz:\n")
    with_initrd_drivers(copy, ("virtio_blk", "virtio_net", "nvme", "gve"))
    return packed(GCP, copy, work)


def _footer_field(offset: int, value: bytes, checksum: bool = True) -> Callable[[Path, Path], Path]:
    def edit(footer: bytearray) -> None:
        footer[offset:offset + len(value)] = value
    return lambda raw, work: edited_footer(fixed_vhd(raw, work), edit, checksum)


DYNAMIC = (3).to_bytes(4, "big")  # the footer's disk type at byte 60
CURRENT_SIZE_AT = 48

CLOUD_BREAKAGES = [
    CloudBreakage("gcp image without nvme in its initrd", GCP, _initrd_without(GCP, "nvme"),
                  {"gcp.initrd-drivers": "fail"},
                  "the kernel cannot load: nvme (neither in the initrd nor built in); gve in the initrd"),
    CloudBreakage("gcp image with nvme but not nvme-core in its initrd", GCP, _nvme_without_its_core,
                  {"gcp.initrd-drivers": "fail"},
                  "the kernel cannot load: nvme (in the initrd without nvme_core, which it needs); gve in the initrd"),
    CloudBreakage("disk.raw misnamed", GCP, lambda raw, work: gce_tar(raw, work, member="image.raw"),
                  {"gcp.tar-members": "fail"}, "unexpected member 'image.raw'; 0 members named disk.raw"),
    CloudBreakage("a file beside disk.raw", GCP, lambda raw, work: gce_tar(raw, work, beside=("notes.txt",)),
                  {"gcp.tar-members": "fail"}, "unexpected member 'notes.txt'"),
    CloudBreakage("POSIX (pax) tar", GCP, lambda raw, work: gce_tar(raw, work, "--format=posix"),
                  {"gcp.tar-format": "fail"}, "not GNU tar headers: disk.raw: pax"),
    CloudBreakage("disk.raw not a whole number of GiB", GCP,
                  lambda raw, work: gce_tar(grown_to(sparse_copy(raw, work / "big.raw"), GIB + 512 * MIB), work),
                  {"gcp.disk-size": "fail"}, "the raw disk: 1610612736 bytes (1.500 GiB, 1536.0 MiB), not a whole number of GiB"),
    CloudBreakage("a qcow2, not a tar", GCP, lambda raw, work: qcow2(raw, work / "image.qcow2"),
                  {"gcp.tar-members": "fail", "gcp.tar-format": "skip"},
                  "not a gzipped tar: Google Cloud imports a .tar.gz holding disk.raw"),
    CloudBreakage("azure image without hv_storvsc in its initrd", AZURE, _initrd_without(AZURE, "hv_storvsc"),
                  {"azure.initrd-drivers": "fail"}, "the kernel cannot load: hv_storvsc (neither in the initrd nor built in); "
                  "hv_vmbus in the initrd, hv_netvsc in the initrd"),
    # qemu-img without force_size rounds the size up to a CHS geometry: the disk grows past its
    # backup GPT and is no longer a whole number of MiB
    CloudBreakage("VHD without force_size", AZURE, lambda raw, work: fixed_vhd(raw, work, "subformat=fixed"),
                  {"azure.disk-size": "fail", "disk.gpt": "fail"}, "not a whole number of MiB"),
    CloudBreakage("VHD footer checksum wrong", AZURE, _footer_field(64, b"\0\0\0\0", checksum=False),
                  {"azure.vhd-footer": "fail"}, "checksum 0x00000000, the footer sums to 0x"),
    CloudBreakage("VHD footer says dynamic", AZURE, _footer_field(60, DYNAMIC),
                  {"azure.vhd-footer": "fail"}, "disk type dynamic, not fixed"),
    CloudBreakage("VHD footer's size not the file's", AZURE,
                  _footer_field(CURRENT_SIZE_AT, (47 * MIB).to_bytes(8, "big")),
                  {"azure.vhd-footer": "fail"}, f"the file is {48 * MIB + 512} bytes, not the current size {47 * MIB}"),
    CloudBreakage("a raw disk, not a VHD", AZURE, lambda raw, work: raw,
                  {"azure.vhd-footer": "fail"}, "no VHD footer at the end: Azure takes a fixed VHD"),
]


@pytest.mark.parametrize("breakage", CLOUD_BREAKAGES, ids=[breakage.name for breakage in CLOUD_BREAKAGES])
def test_cloud_breakage_is_seen_by_its_check(breakage, cloud_raws, tmp_path):
    report = validate_image(breakage.make(cloud_raws[breakage.cloud.name], tmp_path), cloud=breakage.cloud)
    assert statuses(report) == breakage.expected, json.dumps(report.to_dict(), indent=1)
    first = next(check for check in report.checks if check.id == next(iter(breakage.expected)))
    assert not report.ok and breakage.evidence in first.detail, first.detail


def test_every_cloud_check_has_a_breakage():
    covered = {check_id for breakage in CLOUD_BREAKAGES for check_id in breakage.expected}
    assert {check.id for check in CHECKS if not check.applies_to(QEMU)} <= covered


def drivers_check(raw: Path) -> Result:
    return next(check for check in validate_image(raw, cloud=GCP).checks if check.id == "gcp.initrd-drivers")


def test_a_driver_built_into_the_kernel_needs_no_module(synthetic_image, tmp_path):
    """modules.builtin says so where the module tree has it; else the kernel's config (=y)."""
    raw = image_for(GCP, synthetic_image, tmp_path)
    with_initrd_drivers(raw, ("gve",))
    assert drivers_check(raw).status == "fail"
    ext4_edit(raw, boot_file(raw, "config-"), lambda text: text + "CONFIG_BLK_DEV_NVME=y\n")
    check = drivers_check(raw)
    assert (check.status, check.detail) == ("pass", "nvme built in (CONFIG_BLK_DEV_NVME=y), gve in the initrd")
    builtin = f"/usr/lib/modules/{KERNEL}/modules.builtin"
    ext4_write(raw, builtin, b"kernel/drivers/block/loop.ko\n")  # it has the last word
    assert drivers_check(raw).status == "fail"
    ext4_write(raw, builtin, b"kernel/drivers/block/loop.ko\nkernel/drivers/nvme/host/nvme.ko\n")
    check = drivers_check(raw)
    assert (check.status, check.detail) == ("pass", "nvme built in (modules.builtin), gve in the initrd")


def test_cloud_checks_apply_to_their_cloud_only():
    for check in CHECKS:
        assert set(check.clouds) <= set(CLOUDS), check.id
        if check.id.split(".")[0] in CLOUDS:
            assert check.clouds == (check.id.split(".")[0],), check.id


def test_validate_cloud_on_the_command_line_names_the_cloud(synthetic_image):
    table = CliRunner().invoke(cli.main, ["validate", "--cloud", "gcp", str(synthetic_image)])
    assert table.exit_code == 1
    assert f"tdx-image validate --cloud gcp {synthetic_image}" in " ".join(table.stdout.split())
    assert table.stderr.startswith(f"error: {synthetic_image}: 4 check(s) failed (--cloud gcp): gcp.initrd-drivers, "
                                   "gcp.tar-members, gcp.tar-format, gcp.disk-size")
    document = CliRunner().invoke(cli.main, ["validate", str(synthetic_image), "--json"])
    assert document.exit_code == 0 and json.loads(document.stdout)["cloud"] == "qemu"


def test_a_driver_with_what_it_needs_in_the_initrd_passes(synthetic_image, tmp_path):
    raw = image_for(GCP, synthetic_image, tmp_path)
    ext4_write(raw, f"/usr/lib/modules/{KERNEL}/modules.dep",
               b"kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz\n")
    assert drivers_check(raw).status == "fail"  # the initrd lacks nvme-core
    with_initrd_drivers(raw, ("nvme", "nvme_core", "gve"))
    check = drivers_check(raw)
    assert (check.status, check.detail) == ("pass", "nvme in the initrd with nvme_core, gve in the initrd")
