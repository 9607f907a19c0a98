"""``validate --measurements FILE``: the file's registers must be what the image measures."""

from __future__ import annotations

from pathlib import Path

from .checks import FAIL, Check, Finding
from ..image.inspection import Inspection
from ..measure.predict import load_registers, predict_inspected, registers_differ


def measurements_check(path: Path) -> Check:
    """A fail-severity check against ``path`` (read now: a bad file is the user's input error)."""
    expected = load_registers(path)

    def probe(image: Inspection) -> Finding:
        prediction = predict_inspected(str(path), image)
        differ = registers_differ(expected, prediction)
        if differ:
            return Finding(False, f"{path} differs from this image in {', '.join(differ)}")
        return Finding(True, f"{path}: RTMR1, RTMR2 and PCR 4, 5, 8, 9, 11, 12, 14 are this image's")

    return Check("measurements.match", FAIL,
                 "a verifier trusts the published measurements: they must be what this image "
                 "measures when it boots", probe)
