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
from imagebuilder.distros.clouds import AZURE, CLOUDS, GCP, QEMU, Cloud
from imagebuilder.validate import CHECKS, validate_image
from tests.test_validate_checks import KERNEL, boot_file, cpio_gzip, ext4_edit, ext4_write, sh, statuses

# Where each driver lives below the module tree (drivers/nvme/host/nvme.ko, ...).
DRIVER_PATHS = {"virtio_blk": "block", "virtio_net": "net", "nvme": "nvme/host", "gve": "net/ethernet/google/gve",
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


@pytest.mark.parametrize("cloud", [GCP, AZURE], ids=lambda cloud: cloud.name)
def test_an_image_with_the_clouds_initrd_drivers_passes_and_the_report_names_the_cloud(cloud, synthetic_image, tmp_path):
    report = validate_image(image_for(cloud, synthetic_image, tmp_path), cloud=cloud)
    assert statuses(report) == {}, json.dumps(report.to_dict(), indent=1)
    assert report.to_dict()["cloud"] == cloud.name
    ids = {check.id for check in report.checks}
    assert f"{cloud.name}.initrd-drivers" in ids and "kernel.virtio" not in ids  # QEMU's only
    drivers = next(check for check in report.checks if check.id == f"{cloud.name}.initrd-drivers")
    assert all(f"{driver} in the initrd" in drivers.detail for driver in cloud.initrd_drivers)


@pytest.mark.parametrize("cloud", [GCP, AZURE], ids=lambda cloud: cloud.name)
def test_todays_qemu_image_is_failed_for_a_cloud_whose_drivers_its_initrd_lacks(cloud, synthetic_image):
    report = validate_image(synthetic_image, cloud=cloud)
    assert statuses(report) == {f"{cloud.name}.initrd-drivers": "fail"}
    failed = report.failed[0].detail
    assert failed.startswith("not in the initrd nor built into the kernel: " + ", ".join(cloud.initrd_drivers))
    assert validate_image(synthetic_image).ok  # and still passes for QEMU


@dataclass(frozen=True)
class CloudBreakage:
    name: str
    cloud: Cloud
    make: Callable[[Path, Path], Path]  # (the synthetic image, a work directory) -> the mutant
    expected: dict[str, str]  # check id -> status; every other check must pass
    evidence: str = ""  # in the failed check's evidence


def _initrd_without(cloud: Cloud, driver: str) -> Callable[[Path, Path], Path]:
    def make(synthetic: Path, work: Path) -> Path:
        raw = image_for(cloud, synthetic, work)
        with_initrd_drivers(raw, tuple(name for name in cloud.initrd_drivers if name != driver))
        return raw
    return make


CLOUD_BREAKAGES = [
    CloudBreakage("gcp image without nvme in its initrd", GCP, _initrd_without(GCP, "nvme"),
                  {"gcp.initrd-drivers": "fail"}, "not in the initrd nor built into the kernel: nvme; gve in the initrd"),
    CloudBreakage("azure image without hv_storvsc in its initrd", AZURE, _initrd_without(AZURE, "hv_storvsc"),
                  {"azure.initrd-drivers": "fail"}, "not in the initrd nor built into the kernel: hv_storvsc; "
                  "hv_vmbus in the initrd, hv_netvsc in the initrd"),
]


@pytest.mark.parametrize("breakage", CLOUD_BREAKAGES, ids=[breakage.name for breakage in CLOUD_BREAKAGES])
def test_cloud_breakage_is_seen_by_its_check(breakage, synthetic_image, tmp_path):
    report = validate_image(breakage.make(synthetic_image, tmp_path), cloud=breakage.cloud)
    assert statuses(report) == breakage.expected, json.dumps(report.to_dict(), indent=1)
    assert not report.ok and breakage.evidence in report.failed[0].detail


def test_every_cloud_check_has_a_breakage():
    covered = {check_id for breakage in CLOUD_BREAKAGES for check_id in breakage.expected}
    assert {check.id for check in CHECKS if not check.applies_to(QEMU)} <= covered


def test_a_driver_built_into_the_kernel_needs_no_module(synthetic_image, tmp_path):
    """modules.builtin says so where the module tree has it; else the kernel's config (=y)."""
    raw = image_for(GCP, synthetic_image, tmp_path)
    with_initrd_drivers(raw, ("gve",))
    assert statuses(validate_image(raw, cloud=GCP)) == {"gcp.initrd-drivers": "fail"}
    ext4_edit(raw, boot_file(raw, "config-"), lambda text: text + "CONFIG_BLK_DEV_NVME=y\n")
    assert statuses(validate_image(raw, cloud=GCP)) == {}
    builtin = f"/usr/lib/modules/{KERNEL}/modules.builtin"
    ext4_write(raw, builtin, b"kernel/drivers/block/loop.ko\n")  # it has the last word
    assert statuses(validate_image(raw, cloud=GCP)) == {"gcp.initrd-drivers": "fail"}
    ext4_write(raw, builtin, b"kernel/drivers/block/loop.ko\nkernel/drivers/nvme/host/nvme.ko\n")
    report = validate_image(raw, cloud=GCP)
    drivers = next(check for check in report.checks if check.id == "gcp.initrd-drivers")
    assert statuses(report) == {} and drivers.detail == "nvme built in (modules.builtin), gve in the initrd"


def test_cloud_checks_apply_to_their_cloud_only():
    for check in CHECKS:
        assert set(check.clouds) <= set(CLOUDS), check.id
        if check.id.split(".")[0] in CLOUDS:
            assert check.clouds == (check.id.split(".")[0],), check.id


def test_validate_cloud_on_the_command_line_names_the_cloud(synthetic_image):
    table = CliRunner().invoke(cli.main, ["validate", "--cloud", "gcp", str(synthetic_image)])
    assert table.exit_code == 1
    assert f"tdx-image validate --cloud gcp {synthetic_image}" in " ".join(table.stdout.split())
    assert table.stderr.startswith(f"error: {synthetic_image}: 1 check(s) failed (--cloud gcp): gcp.initrd-drivers")
    document = CliRunner().invoke(cli.main, ["validate", str(synthetic_image), "--json"])
    assert document.exit_code == 0 and json.loads(document.stdout)["cloud"] == "qemu"
