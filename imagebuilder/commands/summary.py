"""``tdx-image summary``: the resolved build settings (and where each came from) and what a build
would make, from the composed description — without root, network or KIWI.
"""

from __future__ import annotations

import json
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import click
from ..core.console import Console
from rich.markup import escape
from rich.table import Table

from ..build.pipeline import BuildRequest, compose_description
from ..build.compose import described_format
from ..core.errors import CredentialsError, RepositoryError
from ..core.redact import url_passwords
from ..build import provenance, sbom, settings
from ..build.staging import kiwi_image_file, published_image_file
from ..distros.clouds import get_cloud
from ..build.settings import CUSTOM, SETTINGS, plain
from .build import build_command, build_request


def plan(request: BuildRequest, values: dict, sources: dict[str, str]) -> dict:
    """What ``build`` would do with ``request``, as data; ``values`` are the options' values."""
    target, custom = request.target, request.custom
    with tempfile.TemporaryDirectory(prefix="tdx-image-summary-") as work:
        config = compose_description(request, Path(work) / "description").path / "config.xml"
        image = ET.parse(config).getroot()
        disk_format = described_format(config)
        size = image.find("preferences/type/size")
        packages = [p.get("name") for section in image.iterfind("packages")
                    if section.get("type") == "image"
                    and (section.get("profiles") is None
                         or target.profile in section.get("profiles", "").split(","))
                    for p in section.iterfind("package")]
    version = image.findtext("preferences/version")
    repositories, credentials, refusal = [], None, None
    try:
        repositories = [repository.shown_url for repository in request.repositories]
        credentials = "given" if request.credentials() else "not needed"
    except (RepositoryError, CredentialsError) as error:  # what the build would stop at
        refusal = str(error)
    # Values as the build takes them: defaults resolved, customisations as applied, passwords in
    # URLs shown as ***.
    resolved = {"out_dir": request.out_dir, "release": target.chosen.name,
                "cache_dir": request.cache_dir,
                "mirror": url_passwords(request.mirror) if request.mirror else None,
                "extra_repositories": [repository.shown_url
                                       for repository in request.extra_repositories]}
    return {
        "target": {"name": target.name, "title": target.title, "profile": target.profile,
                   "release": target.chosen.name},
        "settings": {  # what a config file could set, but for the target (above)
            s.key: {"value": plain(resolved[s.field] if s.field in resolved else getattr(
                        custom, s.field) if s.part == CUSTOM else values[s.field]),
                    "from": sources.get(s.field, "default")}
            for s in SETTINGS if s.configurable and s.field != "target"},
        "image": {
            "file": published_image_file(kiwi_image_file(image.get("name", ""), version or "",
                                                         disk_format), get_cloud(custom.cloud)),
            "format": disk_format,
            "size": f"{size.text}{size.get('unit', 'M')}" if size is not None else None,
            "packages": packages,
            "ssh_login": f"{custom.ssh_user} (key {custom.ssh_key.name})" if custom.ssh_key else None,
            # The SBOMs (SPDX 2.3, SPDX 3.0.1, CycloneDX 1.6) and the build provenance.
            "supply_chain": [f"{image.get('name')}.x86_64-{version}{suffix}"
                             for suffix in (*sbom.SUFFIXES.values(), provenance.SUFFIX)],
        },
        "repositories": repositories,
        "credentials": credentials,
        "build_would_refuse": refusal,
        "end_of_life": target.chosen.end_of_life_warning(),
    }


def show(request: BuildRequest, values: dict, sources: dict[str, str], as_json: bool) -> None:
    summary = plan(request, values, sources)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    target, image = summary["target"], summary["image"]
    console.print(f"[bold]{target['name']}[/]: {escape(target['title'])}"
                  + (f" (KIWI profile {target['profile']})" if target["profile"] else ""))
    table = Table("setting", "value", "from", box=None, pad_edge=False)
    for name, setting in summary["settings"].items():
        value = setting["value"]
        shown = ", ".join(value) if isinstance(value, list) else value
        table.add_row(name, escape(str(shown)) if shown not in (None, "", []) else "[dim]-[/]",
                      escape(setting["from"] or "default"))
    console.print(table)
    console.print(f"would build: [bold]{escape(image['file'])}[/] ({image['format']}, "
                  f"disk {image['size'] or 'as KIWI sizes it'}) into {escape(summary['settings']['out']['value'])}")
    console.print(f"packages ({len(image['packages'])} named, dependencies come with them): "
                  + escape(", ".join(image["packages"])))
    console.print(f"SSH login: {escape(image['ssh_login'] or 'none (no key given)')}")
    console.print("SBOMs and provenance: " + escape(", ".join(image["supply_chain"])))
    console.print("repositories: " + escape(", ".join(summary["repositories"]) or "-"))
    if summary["credentials"]:
        console.print(f"credentials: {escape(summary['credentials'])}")
    if summary["end_of_life"]:
        console.print(f"[yellow]warning[/]: {escape(summary['end_of_life'])}")
    if summary["build_would_refuse"]:
        console.print(f"[yellow]the build would refuse[/]: {escape(summary['build_would_refuse'])}")


@click.pass_context
def _summary(ctx, as_json, **values):
    show(build_request(values), values, settings.sources(ctx), as_json)


# `summary` takes the options `build` takes (and reads the same config file), but for how a
# build runs and reports.
summary_command = click.Command(
    "summary", callback=_summary, params=[p for p in build_command.params
                                          if p.name is None or settings.BY_FIELD[p.name].summary],
    help="Print the resolved settings and what `build` would build (no root, no network).")
