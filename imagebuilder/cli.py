"""The ``tdx-image`` command line: one click group, one verb per step a user runs."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from . import __version__, settings, signals
from . import build as builder
from .build import DEFAULT_CACHE_DIR, BuildRequest
from .errors import Interrupted, TdxImageError
from .repos import check_url, parse_repo_option
from .targets import TARGETS, get_target


EXIT_CODES = """\b
Exit codes:
  0    success
  1    the image failed validation or the boot test
  2    bad input (option, file, target, --out that is not ours), or KIWI rejected the description
  3    the host cannot: not root, a tool missing, too little disk, --out in use by another build
  4    a repository is unreachable
  5    repository credentials missing, unusable or refused
  6    KIWI failed
  130  interrupted (SIGINT, SIGTERM, SIGHUP): children stopped, nothing published
"""


class Commands(click.Group):
    """How every verb ends, in one place: the signal policy (signals.py) around it; every
    TdxImageError, usage error and interrupt as one ``error:`` line on stderr and, with
    ``--json``, ``{"ok": false, "error": ..., "exit_code": N}`` on stdout; the exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        try:
            with signals.handled():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except TdxImageError as error:
            fail(str(error), error.exit_code, "--json" in args, error.details)
        except click.exceptions.NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except click.ClickException as error:
            hint = f" (see '{error.ctx.command_path} --help')" if getattr(error, "ctx", None) else ""
            fail(error.format_message() + hint, error.exit_code, "--json" in args)
        except click.Abort:  # an interrupt while click parsed the command line
            fail(f"interrupted by {signals.received_name()}", Interrupted.exit_code,
                 "--json" in args)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted by {signals.received_name()}") from None


def fail(message: str, exit_code: int, as_json: bool, details: dict | None = None) -> None:
    click.echo(f"error: {message}", err=True)
    if as_json:
        click.echo(json.dumps({"ok": False, **(details or {}), "error": message,
                               "exit_code": exit_code}, indent=2))
    sys.exit(exit_code)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="tdx-image")
def main():
    """Build, validate and boot Intel TDX confidential-VM guest images."""


class PhaseDisplay:
    """One line per finished build phase with its duration, a spinner on the running one."""

    def __init__(self, console: Console):
        self.console = console
        self.status = console.status("starting")
        self.current: tuple[str, float] | None = None

    def __enter__(self):
        self.status.start()
        return self

    def __exit__(self, *exc_info):
        self.status.stop()
        if self.current and exc_info[0] is not None:
            self.console.print(f"[red]✗[/] {self.current[0]}")

    def __call__(self, phase: str) -> None:
        self._finish_current()
        if phase == "done":
            self.current = None
            return
        self.current = (phase, time.monotonic())
        self.status.update(f"{phase} …")
        if not self.console.is_terminal:  # no spinner in a log: say when each phase starts
            self.console.print(f"… {phase}", soft_wrap=True)

    def _finish_current(self) -> None:
        if self.current:
            name, started = self.current
            self.console.print(f"[green]✓[/] {name} [dim]({time.monotonic() - started:.1f}s)[/]")


@main.command()
@click.argument("target", metavar="TARGET",
                shell_complete=lambda ctx, param, incomplete: [
                    name for name in TARGETS if name.startswith(incomplete)])
@click.option("--release", metavar="RELEASE",
              help="The distribution release: leap 15.5 (default) or 15.6; sles 15-SP5 "
                   "(default), 15-SP6 or 15-SP7; debian 12.")
@click.option("--container", is_flag=True,
              help="Build inside the target's own container image (podman or docker): how "
                   "Leap and SLES are built on a non-SUSE host.")
@click.option("--container-image", metavar="IMAGE",
              help="The container image for --container.  [default: openSUSE Leap or SLE BCI "
                   "of the release; debian: localhost/tdx-image-debian:12 from "
                   "containers/make-debian-12-image]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the artifacts are published.  [default: out/TARGET]")
@click.option("--mirror", metavar="URL",
              help="Base URL of the distribution's repositories (Debian: the archive, its "
                   "-security twin is used too; Leap: a download.opensuse.org mirror; SLES: an "
                   "RMT/SMT or SCC base).  [default: Debian from the host's apt sources, Leap "
                   "download.opensuse.org, SLES updates.suse.com]")
@click.option("--repo", "repos", multiple=True, metavar="URL[,SUITE[,COMPONENTS]]",
              help="Add a repository: URL alone is rpm-md; with SUITE it is an apt repository.")
@click.option("--credentials", "credentials_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Repository credentials file (username=/password= lines, as SUSEConnect's "
                   "SCCcredentials); or set TDX_IMAGE_REPO_USER and TDX_IMAGE_REPO_PASSWORD.")
@click.option("--signing-key", "signing_keys", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Trust this repository signing key (repeatable).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_CACHE_DIR, show_default=True, envvar="TDX_IMAGE_CACHE_DIR",
              help="Package cache shared by all builds (or set TDX_IMAGE_CACHE_DIR).")
@click.option("--boot-test", is_flag=True, help="Boot the image in QEMU after validation.")
@click.option("--no-incremental", is_flag=True,
              help="Bootstrap and install packages afresh instead of reusing the prepared root "
                   "cached for the same packages, repositories and repository metadata.")
@click.option("--dry-run", is_flag=True,
              help="Compose and check the description, print the kiwi-ng command, build nothing.")
@click.option("--force", is_flag=True,
              help="Replace --out (and OUT.failed) even if they hold files tdx-image did not "
                   "write.  Never: the current directory, /, $HOME, the project's directories.")
@settings.options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def build(dry_run, as_json, container, container_image, **options):
    """Build a TDX guest image of TARGET (debian, leap or sles) with KIWI.

    Any option can also be set in tdx-image.toml (see --config); the command line wins.
    """
    request = build_request(**options)
    if dry_run:
        plan = builder.dry_run(request)
        if as_json:
            click.echo(json.dumps(plan, indent=2))
        else:
            click.echo(f"out: {plan['out']} ({plan['out_state']})")
            click.echo("command: " + shlex.join(plan["command"]))
            if plan["note"]:
                click.echo(f"note: {plan['note']}", err=True)
        return
    if container or container_image:
        from . import container as containers  # only this path needs the engine

        containers.build(request, container_image, as_json)
        return
    builder.hostcheck.require_build_host(request.target)  # refused before anything else
    console = Console(stderr=True)
    if not builder.hostcheck.kernel_mounts_vfat():
        console.print("[yellow]note[/]: this kernel cannot mount vfat; the EFI partition is "
                      "written with mtools instead (ESP fallback)")
    with PhaseDisplay(console) as display:
        record = builder.build(request, display)
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        out = request.out_dir
        console.print(f"[green]built[/] {out / record['image']} in {record['durations_s']['total']}s "
                      f"(KIWI {record['durations_s']['kiwi']}s, validation passed); "
                      f"SBOM {record['sbom']['file']}")


def build_request(target, release, out_dir, mirror, repos, credentials_file, signing_keys,
                  cache_dir, boot_test, no_incremental, force, custom) -> BuildRequest:
    return BuildRequest(
        target=get_target(target, release),
        out_dir=out_dir or Path("out") / target,
        mirror=check_url("--mirror", mirror) if mirror is not None else None,
        extra_repositories=[parse_repo_option(value) for value in repos],
        credentials_file=credentials_file,
        signing_keys=[key.resolve() for key in signing_keys],
        cache_dir=cache_dir.resolve(),
        boot_test=boot_test,
        incremental=not no_incremental,
        force=force,
        custom=custom,
    )


@click.pass_context
@settings.customised
def _summary(ctx, as_json, container, container_image, **options):
    from .summary import show  # the summary composes the description: keep `build` light

    show(build_request(**options), settings.sources(ctx), as_json,
         container=container_image or ("the target's" if container else None))


# `summary` takes exactly the options `build` takes (and reads the same config file).
main.add_command(click.Command(
    "summary", callback=_summary, params=[p for p in build.params if p.name != "dry_run"],
    help="Print the resolved settings and what `build` would build (no root, no network)."))

# The other verbs live with the step they drive: validation, the boot test, launch, host checks.
from . import boot, doctor, launch  # noqa: E402
from .measure.command import measure_command  # noqa: E402
from .validate import validate_command  # noqa: E402

main.add_command(validate_command)
main.add_command(boot.boot_command)
main.add_command(launch.run_command)
main.add_command(doctor.doctor_command)
main.add_command(measure_command)
