"""Offline validation of a TDX guest disk image: no boot, no mount, no root, no network.

``validate_image`` reads a qcow2 or raw image in place (qcow2 clusters, ext4, FAT and the initrd's
cpio archives are parsed here; qemu-img only identifies and checks the file) and runs every check
in ``checks.CHECKS``; ``validate_command`` is the ``tdx-image validate`` verb.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

from ..inputs import require_regular_file
from .checks import CHECKS, Check
from .command import validate_command
from .disk import open_disk
from .inspection import Inspection, Unavailable
from .report import CheckResult, Report

__all__ = ["validate_image", "validate_command", "Report", "CheckResult", "CHECKS"]


def validate_image(image: Path, manifest: Path | None = None,
                   measurements: Path | None = None) -> Report:
    """Run every check on ``image``; raises errors.InputError if the image cannot be read at all."""
    started = time.monotonic()
    if manifest is not None:  # before the image is read: a FIFO would hang the read
        require_regular_file(Path(manifest), "--manifest")
    checks = list(CHECKS)
    if measurements is not None:
        from ..measure.check import measurements_check  # measure reads with this package

        checks.append(measurements_check(measurements))
    with closing(open_disk(Path(image))) as disk:
        inspection = Inspection(disk, manifest)
        results = [_run(check, inspection) for check in checks]
    return Report(str(image), results, time.monotonic() - started)


def _run(check: Check, inspection: Inspection) -> CheckResult:
    try:
        finding = check.probe(inspection)
    except Unavailable as missing:
        return CheckResult(check.id, check.severity, "skip", check.reason, f"not checked: {missing}")
    status = "pass" if finding.passed else check.severity
    return CheckResult(check.id, check.severity, status, check.reason, finding.evidence)

