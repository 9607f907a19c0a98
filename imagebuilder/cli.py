"""The ``tdx-image`` command line: one click group, one verb per step a user runs."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from . import __version__, progress, settings, signals
from . import build as builder
from .build import BuildRequest
from .errors import Interrupted, TdxImageError
from .targets import get_target


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
    """The build's phase events on the console: a spinner on the running phase (on a terminal),
    one line per finished phase or step with its duration, a cross on the one that failed."""

    def __init__(self, console: Console):
        self.console = console
        self.status = console.status("starting")

    def __enter__(self):
        self.status.start()
        return self

    def __exit__(self, *exc_info):
        self.status.stop()

    def __call__(self, event: progress.Event) -> None:
        indent = "  " if event.within else ""
        if event.status == progress.STARTED:
            doing = event.message or event.phase
            self.status.update(f"{escape(str(doing))} …")
            if not self.console.is_terminal:  # no spinner in a log: say when each phase starts
                self.console.print(f"… {escape(str(doing))}", soft_wrap=True)
        elif event.status == progress.FINISHED:
            self.console.print(f"{indent}[green]✓[/] {escape(str(event.phase))} "
                               f"[dim]({event.duration_s:.1f}s)[/]")
            if event.within:  # until the next step starts, the phase it ran in goes on
                self.status.update(f"{escape(event.within)} …")
        elif event.status == progress.FAILED:
            self.console.print(f"{indent}[red]✗[/] {escape(str(event.phase))} "
                               f"[dim]({event.duration_s:.1f}s)[/]")
        else:
            self.console.print(f"[yellow]note[/]: {escape(str(event.message))}", soft_wrap=True)


@main.command()
@settings.options
def build(dry_run, as_json, container, container_image, progress_format, **values):
    """Build a TDX guest image of TARGET (debian, leap or sles) with KIWI.

    Any option can also be set in tdx-image.toml (see --config); the command line wins.
    """
    request = build_request(values)
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

        containers.build(request, container_image, as_json, progress_format)
        return
    if progress_format == "json":
        record = builder.build(request, progress.JsonLines(sys.stderr))
    else:
        console = Console(stderr=True)
        with PhaseDisplay(console) as display:
            record = builder.build(request, display)
        if not as_json:
            console.print(f"[green]built[/] {request.out_dir / record['image']} in "
                          f"{record['durations_s']['total']}s (KIWI {record['durations_s']['kiwi']}s, "
                          f"validation passed); SBOM {record['sbom']['file']}")
    if as_json:
        click.echo(json.dumps(record, indent=2))


def build_request(values: dict) -> BuildRequest:
    """The request the options' values make: a request setting fills the BuildRequest field of
    its name (settings.SETTINGS); the target with its release, --out's default and
    --no-incremental are the ones to derive."""
    target = get_target(values["target"], values["release"])
    given = {field.name: values[field.name] for field in dataclasses.fields(BuildRequest)
             if field.name in values}
    return BuildRequest(**{**given, "target": target,
                           "out_dir": values["out_dir"] or Path("out") / target.name,
                           "incremental": not values["no_incremental"],
                           "custom": settings.customisation(values)})


@click.pass_context
def _summary(ctx, as_json, **values):
    from .summary import show  # the summary composes the description: keep `build` light

    show(build_request(values), values, settings.sources(ctx), as_json)


# `summary` takes the options `build` takes (and reads the same config file), but for how a
# build runs and reports.
main.add_command(click.Command(
    "summary", callback=_summary, params=[p for p in build.params
                                          if p.name is None or settings.BY_FIELD[p.name].summary],
    help="Print the resolved settings and what `build` would build (no root, no network)."))

# The other verbs live with the step they drive: validation, the boot test, launch, host checks.
from . import boot, doctor, launch_command  # noqa: E402
from .measure.command import measure_command  # noqa: E402
from .validate.command import validate_command  # noqa: E402

main.add_command(validate_command)
main.add_command(boot.boot_command)
main.add_command(launch_command.run_command)
main.add_command(doctor.doctor_command)
main.add_command(measure_command)
