"""Offline validation of a TDX guest disk image: no boot, no mount, no root, no network.

``validate_image`` (validator.py) reads a qcow2 or raw image in place (qcow2 clusters, ext4, FAT
and the initrd's cpio archives are parsed here; qemu-img only identifies and checks the file) and
runs every check in ``checks.CHECKS``; ``validate_command`` (command.py) is the ``tdx-image
validate`` verb, which adds the ``--measurements`` check from measure/ (measure reads images with
this package, so the package itself does not import measure).
"""

from __future__ import annotations

from .checks import CHECKS
from .report import Report
from .validator import validate_image

__all__ = ["validate_image", "Report", "CHECKS"]
