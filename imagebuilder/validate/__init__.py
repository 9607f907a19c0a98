"""Offline validation of a TDX guest disk image: no boot, no mount, no root, no network.

``validate_image`` (validator.py) reads a qcow2 or raw image in place with image/'s readers and
runs every check in ``checks.CHECKS``; ``measurements`` is the ``--measurements`` check, which
compares measure/'s prediction with a recorded one.
"""

from __future__ import annotations

from .checks import CHECKS
from .report import Report
from .validator import validate_image

__all__ = ["validate_image", "Report", "CHECKS"]
