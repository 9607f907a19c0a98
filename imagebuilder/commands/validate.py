"""``tdx-image validate IMAGE``: exit 0 all passed, 1 a check failed, 2 the image is unreadable."""

from __future__ import annotations

import json
from pathlib import Path

import click
from ..core.console import Console

from ..core.errors import CheckFailed, InputError
from ..core.inputs import UserPath, require_writable_file
from ..distros.clouds import Cloud
from ..validate.measurements import measurements_check
from ..validate.validator import validate_image
from .context import cloud_option


@click.command("validate")
@click.argument("image", type=UserPath(path_type=Path))
@click.option("--allow-backing-file", "allow_backing", is_flag=True,
              help="Also read the backing files a qcow2 names (regular files, no loop): without "
                   "it such an image is refused, as its contents would come from this host.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("--junit", type=UserPath(dir_okay=False, path_type=Path), help="Also write a JUnit XML report here.")
@click.option("--manifest", type=UserPath(path_type=Path),
              help="The build's published overlay-manifest.json (default: the one inside the image).")
@click.option("--measurements", type=UserPath(path_type=Path),
              help="Also check that this measurements file (a build's measurements.json or "
                   "`measure --json`) holds the registers the image measures.")
@cloud_option("Where IMAGE is to boot: also check what that cloud needs (its initrd drivers, "
              "its disk format) and skip what only another needs.")
def validate_command(image: Path, as_json: bool, junit: Path | None, manifest: Path | None,
                     measurements: Path | None, allow_backing: bool, cloud: Cloud):
    """Check, without booting, that IMAGE will boot as an Intel TDX guest and is safe to ship."""
    if junit:
        require_writable_file(junit, "--junit")
    more = [measurements_check(measurements)] if measurements is not None else []
    report = validate_image(image, manifest=manifest, more=more, allow_backing=allow_backing,
                            cloud=cloud)
    if junit:
        try:
            report.write_junit(junit)
        except OSError as error:
            raise InputError(f"cannot write --junit {junit}: {error.strerror}")
    failed = None if report.ok else CheckFailed(
        f"{image}: {len(report.failed)} check(s) failed (--cloud {cloud.name}): "
        f"{', '.join(c.id for c in report.failed)}",
        details=report.to_dict())
    if as_json and failed:
        raise failed  # the CLI prints the report with the error as one document
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        report.render(Console())
    if failed:
        raise failed
