"""``tdx-image doctor``: can this machine build images, and can it run them as TDs?

It shows every host requirement (requirements.py) in the words and with the hints the verbs
use when one is missing, and whether each target's repositories answer.  A requirement of what
every build or every TD needs fails; one needed only for some targets or for the boot test warns.
The command exits non-zero (HostError's code) when a check of the selected sections fails, so a
script can ask ``tdx-image doctor --only build`` before building.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from ..host import requirements
from ..host.facts import HostFacts
from ..core.errors import HostError, TdxImageError
from ..core.inputs import UserPath
from ..distros.repos import check_reachable, load_credentials
from ..core.results import FAIL, INFO, PASS, WARN, Result, render, wide_console
from ..distros.targets import TARGETS
from .context import pass_host

REPOSITORY_TIMEOUT = 10.0
# The purposes each section reports, and what a requirement not met counts as there.
SECTIONS = {
    "build": {"build": FAIL, "build:apt": WARN, "build:zypper": WARN, "build:uki": WARN, "build:verity": WARN,
              "container": WARN, "boot": WARN, "boot:uefi": WARN, "boot:tpm": WARN},
    "tdx": {"tdx": FAIL, "kvm": FAIL},
}


def host_checks(section: str, build_dir: Path, host: HostFacts,
                firmware: Path | None = None) -> list[Result]:
    purposes = SECTIONS[section]
    context = requirements.Context(host, build_dir=build_dir, firmware=firmware)
    results = []
    for requirement in requirements.REQUIREMENTS:
        severities = {purposes[purpose] for purpose in requirement.needed_for if purpose in purposes}
        if severities:
            results.append(requirement.evaluate(context, FAIL if FAIL in severities else WARN,
                                                section))
    return results


def build_checks(build_dir: Path, host: HostFacts) -> list[Result]:
    with ThreadPoolExecutor(max_workers=len(TARGETS)) as pool:
        repositories = pool.map(repository_check, TARGETS)
        return host_checks("build", build_dir, host) + list(repositories) + [
            release_check(name) for name in TARGETS]


def tdx_checks(host: HostFacts, firmware: Path | None = None) -> list[Result]:
    return host_checks("tdx", Path("."), host, firmware)


def repository_check(target_name: str) -> Result:
    name = f"repositories: {target_name}"
    target = TARGETS[target_name]
    try:
        repositories = target.repositories(None)
        carried = next((repo.credentials for repo in repositories if repo.credentials), None)
        check_reachable(repositories, carried or load_credentials(None), REPOSITORY_TIMEOUT)
    except TdxImageError as error:
        # A target whose repositories are out of reach can still be built with --mirror.
        return Result(name, WARN, error.message, error.hint, WARN, "build")
    return Result(name, PASS, f"{len(repositories)} reachable", "", WARN, "build")


def release_check(target_name: str) -> Result:
    """Which of a target's releases are past general support (they still build, with a warning)."""
    target = TARGETS[target_name]
    ended = [f"{release.name} ({release.supported_until})" for release in target.releases
             if release.end_of_life_warning()]
    detail = f"default {target.releases[0].name}" + (
        f"; past general support: {', '.join(ended)}" if ended else "")
    hint = "they build with an end-of-life warning" if ended else ""
    return Result(f"releases: {target_name}", INFO if ended else PASS, detail, hint, INFO, "build")


def record(check: Result) -> dict:
    return {"section": check.group, "name": check.id, "status": check.status,
            "detail": check.detail, "hint": check.hint}


@click.command("doctor")
@click.option("--only", type=click.Choice(["build", "tdx"]),
              help="Check only the build host or only the TDX host.")
@click.option("--build-dir", type=UserPath(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where builds will write (free space is checked there).")
@click.option("--firmware", "--tdvf", "firmware", type=UserPath(dir_okay=False, path_type=Path),
              help="The TDVF a TD would boot with: is it TDVF, does it measure the boot into RTMRs?  "
                   "[default: the host's, preferring one that does]")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_host
def doctor_command(host, only, build_dir, firmware, as_json):
    """Check this machine: can it build images, and can it run them as TDs?"""
    checks = ((build_checks(build_dir, host) if only != "tdx" else [])
              + (tdx_checks(host, firmware) if only != "build" else []))
    failed = [f"{item.group}: {item.id}" for item in checks if item.failed]
    report = {"ok": not failed, "checks": [record(item) for item in checks]}
    if failed and as_json:  # the CLI prints the checks with the error as one document
        raise HostError(f"{len(failed)} check(s) failed: {', '.join(failed)}",
                        "see the checks", details=report)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render(wide_console(), checks)
    if failed:
        raise HostError(f"{len(failed)} check(s) failed: {', '.join(failed)}",
                        "see the table above")
