"""The ``tdx-image`` command line: one click group, one verb per step a user runs."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import Interrupted, TdxImageError


class Commands(click.Group):
    """Turns every TdxImageError (and Ctrl-C) into one ``error:`` line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TdxImageError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(Interrupted.exit_code)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tdx-image")
def main():
    """Build, validate and boot Intel TDX confidential-VM guest images."""
