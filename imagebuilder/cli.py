"""The ``tdx-image`` command line: one click group, one verb per step a user runs."""

from __future__ import annotations

import io
import json
import os
import sys

import click

from . import __version__
from .commands import boot, build, doctor, measure, run, summary, validate, verify
from .core.errors import HostError, Interrupted, TdxImageError
from .core.redact import one_line, url_passwords
from .host import signals


EXIT_CODES = """\b
Exit codes:
  0    success
  1    the image failed validation or the boot test, or verify's log, quote, image disagree
  2    bad input (option, file, target, --out that is not ours), or KIWI rejected the description
  3    the host cannot: not root, a tool missing, too little disk, --out in use by another build,
       another package manager's lock; or the output could not be written (stdout closed)
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
        # The verb ends inside the policy: a second Ctrl-C while the error line is printed is
        # recorded, never a KeyboardInterrupt that kills the process without it.
        with signals.handled(process_ends=True):
            try:
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
            except BrokenPipeError:  # stdout's reader went away (`measure ... | head -c1`)
                _discard_stdout()
                fail("stdout was closed before the output was written (broken pipe)",
                     HostError.exit_code, False)
            except KeyboardInterrupt:  # a signal after the verb returned, before the exit
                fail(f"interrupted by {signals.received_name()}", Interrupted.exit_code,
                     "--json" in args)
            sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted by {signals.received_name()}") from None


def _discard_stdout() -> None:
    """What is still buffered for a closed stdout goes nowhere: flushing it at exit would fail
    again, after the error line."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (tests)
        pass


def fail(message: str, exit_code: int, as_json: bool, details: dict | None = None) -> None:
    """One ``error:`` line (whatever the message quotes stays on it) and the --json document,
    neither with a password a URL in them carried."""
    message = url_passwords(message)
    click.echo(f"error: {one_line(message)}", err=True)
    if as_json:
        click.echo(url_passwords(json.dumps({"ok": False, **(details or {}), "error": message,
                                             "exit_code": exit_code}, indent=2)))
    sys.exit(exit_code)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="tdx-image")
def main():
    """Build, validate and boot Intel TDX confidential-VM guest images."""


for command in (build.build_command, summary.summary_command, validate.validate_command,
                measure.measure_command, verify.verify_command, boot.boot_command, run.run_command,
                doctor.doctor_command):
    main.add_command(command)
