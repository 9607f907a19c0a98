"""Every check of ``checks.CHECKS`` (and any the caller adds) run on one image, read in place."""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from ..core.inputs import require_regular_file
from ..core.results import SKIP, Result, status_of
from ..distros.clouds import QEMU, Cloud
from .checks import CHECKS, Check
from ..image.disk import open_disk
from ..image.inspection import Inspection, Unavailable
from .report import Report


def validate_image(image: Path, manifest: Path | None = None, more: Iterable[Check] = (),
                   allow_backing: bool = False, cloud: Cloud = QEMU) -> Report:
    """Run every check that applies to ``cloud`` on ``image``; raises errors.InputError if the
    image cannot be read at all."""
    started = time.monotonic()
    if manifest is not None:  # before the image is read: a FIFO would hang the read
        require_regular_file(Path(manifest), "--manifest")
    checks = [check for check in (*CHECKS, *more) if check.applies_to(cloud)]
    with closing(open_disk(Path(image), allow_backing)) as disk:
        inspection = Inspection(disk, manifest)
        results = [_evaluate(check, inspection) for check in checks]
    return Report(str(image), results, time.monotonic() - started, cloud.name)


def _evaluate(check: Check, inspection: Inspection) -> Result:
    try:
        finding = check.probe(inspection)
    except Unavailable as missing:
        return Result(check.id, SKIP, f"not checked: {missing}", check.reason, check.severity)
    return Result(check.id, status_of(finding, check.severity), finding.detail, check.reason,
                  check.severity)
