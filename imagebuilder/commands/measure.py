"""``tdx-image measure IMAGE``: exit 0 every register predicted, 1 some could not be, 2 unreadable."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..core.errors import CheckFailed, InputError
from ..core.inputs import require_regular_file
from ..measure.eventlog import EventLogError, parse_tcg2_log
from ..measure.predict import PREDICTED_PCRS, PREDICTED_RTMRS, Prediction, compare_with_log, predict


def render(prediction: Prediction, console: Console) -> None:
    table = Table(title=f"tdx-image measure {prediction.image}")
    for column in ("register", "predicted SHA-384", "events"):
        table.add_column(column, overflow="fold")
    td_events = prediction.td_events
    for index in PREDICTED_RTMRS:
        count = sum(rtmr == index for rtmr, _ in td_events)
        value = prediction.rtmr(index) or f"[red]unpredicted[/]: {prediction.unpredicted[f'rtmr {index}']}"
        table.add_row(f"RTMR{index} (TD)", value, str(count))
    for index in PREDICTED_PCRS:
        count = sum(event.pcr == index for event in prediction.events)
        value = prediction.pcr(index) or f"[red]unpredicted[/]: {prediction.unpredicted[f'pcr {index}']}"
        table.add_row(f"PCR {index} (TPM)", value, str(count))
    console.print(table)
    for note in prediction.notes:
        console.print(f"[yellow]note[/]: {note}")
    console.print(f"go-tdx-guest check {prediction.go_tdx_guest_flags()}  "
                  "[dim](RTMR0 and MRTD come from the platform, see README)[/]")


@click.command("measure")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print registers, unpredicted registers and the ordered event list as JSON.")
@click.option("--events", "show_events", is_flag=True, help="Also list every event (text output).")
@click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Compare with a real boot's TPM event log (the guest's "
                   "/sys/kernel/security/tpm0/binary_bios_measurements): name where they part.")
def measure_command(image: Path, as_json: bool, show_events: bool, log_file: Path | None):
    """Predict IMAGE's boot measurements offline: RTMR1/RTMR2 of a TD booted with TDVF, and
    PCR 4, 5, 8, 9, 14 (SHA-384) of a VM with a software TPM (the `boot --tpm` shape)."""
    if log_file is not None:  # before the prediction: a FIFO would hang the read after it
        require_regular_file(log_file, "--log")
    prediction = predict(image)
    failure, log_matches = None, False
    if log_file is not None:
        try:
            differences = compare_with_log(prediction, parse_tcg2_log(log_file.read_bytes()))
        except (OSError, EventLogError) as error:
            raise InputError(f"--log {log_file}: {error}", "give a TCG2 (crypto-agile) event log")
        if differences:
            failure = CheckFailed("the event log differs from the prediction: " + "; ".join(differences))
        log_matches = not differences
    if prediction.unpredicted and not failure:
        failure = CheckFailed(f"{image}: unpredicted: {', '.join(sorted(prediction.unpredicted))}",
                              "the events named above are outside what measure models")
    if as_json and failure:
        failure.details = prediction.to_dict()  # the CLI prints it with the error as one document
        raise failure
    if as_json:
        click.echo(json.dumps(prediction.to_dict(), indent=2))
    else:
        console = Console()
        if show_events:
            for event in prediction.events:
                console.print(f"PCR {event.pcr:>2} {event.digest.hex()[:16]}… "
                              f"{event.description.splitlines()[0]}", markup=False, highlight=False)
        render(prediction, console)
    if log_matches:
        click.echo(f"{log_file}: every event of PCR 4, 5, 8, 9 and 14 as predicted", err=True)
    if failure:
        raise failure
