"""``tdx-image verify``: a real boot's event log against its TD quote and the image, offline.
Exit 0 every check asked for holds, 1 one fails, 2 unreadable or foreign input."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from ..core.errors import CheckFailed
from ..core.inputs import UserPath
from ..verify.checks import Verdict, verify_files


def render(verdict: Verdict, console: Console) -> None:
    document = verdict.to_dict()
    log = document["log"]
    console.print(f"log: {log['kind'].upper()}, {log['events']} events", highlight=False)
    for name, value in document["replayed"].items():
        console.print(f"  replayed {name.upper():6} {value}", highlight=False, soft_wrap=True)
    if verdict.quote is not None:
        quote = document["quote"]
        flags = ", ".join(f"{name} {'yes' if on else 'no'}"
                          for name, on in quote["td_attributes_flags"].items())
        console.print(f"quote: version {quote['version']} ({quote['body']}); MRTD {quote['mrtd']}; "
                      f"TD attributes {quote['td_attributes']} ({flags}); XFAM {quote['xfam']}; "
                      f"MRCONFIGID {quote['mrconfigid']}; REPORTDATA {quote['reportdata']}",
                      highlight=False, soft_wrap=True)
        said = ("[green]match[/]" if verdict.log_matches_quote
                else f"[red]differ[/] in {', '.join(verdict.quote_mismatch)}")
        console.print(f"log ⇔ quote RTMR0-3: {said}")
    if verdict.expected is not None:
        if verdict.log_matches_image:
            console.print(f"log ⇔ image ({escape(verdict.expected.source)}): [green]every event "
                          "of the registers it decides as predicted[/]")
        for difference in verdict.image_differences:
            console.print(f"log ⇔ image: [red]{escape(str(difference))}[/]", soft_wrap=True)
    for inconsistent in verdict.inconsistent_events:
        console.print(f"[red]event {escape(inconsistent)}[/]", soft_wrap=True)
    if document["not_checked"]:
        console.print(f"[yellow]not checked[/]: {escape(document['not_checked'])}", soft_wrap=True)


@click.command("verify")
@click.option("--log", "log_file", required=True, type=UserPath(path_type=Path),
              help="The boot's event log: a TD's CCEL (/sys/firmware/acpi/tables/data/CCEL) or "
                   "a TPM log (/sys/kernel/security/tpm0/binary_bios_measurements).")
@click.option("--quote", "quote_file", type=UserPath(path_type=Path),
              help="The TD quote (version 4 or 5) of the same boot: its RTMRs must be the log's.")
@click.option("--image", type=UserPath(path_type=Path),
              help="The image that booted: the log's events must be the ones it measures.")
@click.option("--measurements", "measurements_file", type=UserPath(path_type=Path),
              help="Instead of --image: its measurements.json (or `measure --json`).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def verify_command(log_file, quote_file, image, measurements_file, as_json):
    """Check a real boot offline: replay its event log (TD CCEL or TPM log), compare it with the
    TD quote's RTMRs and, event by event, with what the image measures."""
    verdict = verify_files(log_file, quote_file, image, measurements_file)
    failure = None
    if not verdict.ok:
        failure = CheckFailed("; ".join(verdict.problems()),
                              "the log, the quote and the image are not of one boot")
    if as_json:
        if failure:
            failure.details = verdict.to_dict()
            raise failure
        click.echo(json.dumps(verdict.to_dict(), indent=2))
        return
    render(verdict, Console())
    if failure:
        raise failure
