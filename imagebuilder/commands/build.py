"""The `build` verb: compose, build with KIWI, validate, measure and publish one image."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path

import click
from ..core.console import Console
from rich.markup import escape

from ..build import pipeline, progress, settings
from ..build.pipeline import BuildRequest
from ..distros.targets import get_target
from .context import pass_host


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

    def __call__(self, event: progress.PhaseEvent) -> None:
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


@click.command("build")
@settings.options
@pass_host
def build_command(host, dry_run, as_json, container, container_image, progress_format, **values):
    """Build a TDX guest image of TARGET (debian, leap or sles) with KIWI.

    Any option can also be set in tdx-image.toml (see --config); the command line wins.
    """
    request = build_request(values)
    if dry_run:
        plan = pipeline.dry_run(request, host)
        if as_json:
            click.echo(json.dumps(plan, indent=2))
        else:
            click.echo(f"out: {plan['out']} ({plan['out_state']})")
            click.echo("command: " + shlex.join(plan["command"]))
            if plan["note"]:
                click.echo(f"note: {plan['note']}", err=True)
        if plan["warning"]:
            click.echo(f"warning: {plan['warning']}", err=True)
        return
    if container or container_image:
        from ..build import container as containers  # only this path needs the engine

        containers.build_in_container(request, container_image, as_json, host, progress_format)
        return
    if progress_format == "json":
        record = pipeline.build(request, progress.JsonLines(sys.stderr), host)
    else:
        console = Console(stderr=True)
        with PhaseDisplay(console) as display:
            record = pipeline.build(request, display, host)
        if not as_json:
            console.print(f"[green]built[/] {escape(str(request.out_dir / record['image']))} in "
                          f"{record['durations_s']['total']}s (KIWI {record['durations_s']['kiwi']}s, "
                          f"validation passed); SBOM {record['sbom']['file']}")
            show_next_steps(console, record["cloud"])
    if as_json:
        click.echo(json.dumps(record, indent=2))


def show_next_steps(console: Console, cloud: dict) -> None:
    """The commands that take a cloud image there (build.json's cloud.next_steps), printed for
    the user to run: tdx-image runs none of them."""
    if not cloud["next_steps"]:
        return
    console.print(f"next, for {escape(cloud['title'])} (not run by tdx-image; replace the "
                  "words in capitals):")
    for step in cloud["next_steps"]:
        console.print(f"  # {escape(step['purpose'])}", soft_wrap=True)
        console.print(f"  {escape(step['command'])}", soft_wrap=True, highlight=False)


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
                           "custom": settings.customisation(values, target)})
