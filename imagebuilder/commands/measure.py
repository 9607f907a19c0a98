"""``tdx-image measure IMAGE``: exit 0 every register predicted (and, with --log, every event as
logged), 1 some could not be (or the log differs), 2 unreadable or foreign input."""

from __future__ import annotations

import json
from pathlib import Path

import click
from ..core.console import Console
from rich.table import Table
from rich.text import Text

from ..core.errors import CheckFailed, InputError
from ..core.inputs import UserPath, read_bytes
from ..distros.clouds import AZURE, QEMU, Cloud
from ..measure.azure import PREDICTED, Register, azure_registers
from ..measure.predict import PREDICTED_PCRS, PREDICTED_RTMRS, Prediction, predict
from ..measure.reference import FORMATS, reference_values
from ..measure.replay import CCEL, EventLog
from ..measure.tdvf import SINGLE_PASS, TdvfError, measure_firmware
from ..verify.checks import Expected, read_log, verify
from .context import cloud_option

FIRMWARE_MAX_BYTES = 64 << 20  # OVMF images are 2-4 MiB


def unpredicted(reason: str) -> Text:
    return Text.assemble(("unpredicted", "red"), ": ", reason)


def render(prediction: Prediction, console: Console) -> None:
    table = Table(title=Text(f"tdx-image measure {prediction.image}"))  # text, never markup
    for column in ("register", "predicted SHA-384", "events"):
        table.add_column(column, overflow="fold")
    td_events = prediction.td_events
    for index in PREDICTED_RTMRS:
        count = sum(rtmr == index for rtmr, _ in td_events)
        value = prediction.rtmr(index) or unpredicted(prediction.unpredicted[f"rtmr {index}"])
        table.add_row(f"RTMR{index} (TD)", value, str(count))
    for index in PREDICTED_PCRS:
        count = sum(event.pcr == index for event in prediction.events)
        value = prediction.pcr(index) or unpredicted(prediction.unpredicted[f"pcr {index}"])
        table.add_row(f"PCR {index} (TPM)", value, str(count))
    console.print(table)
    for note in prediction.notes:
        console.print(Text.assemble(("note", "yellow"), ": ", note))
    console.print(f"go-tdx-guest check {prediction.go_tdx_guest_flags()}  "
                  "[dim](RTMR0 and MRTD come from the platform, see README)[/]")


def show_azure(registers: list[Register], console: Console) -> None:
    table = Table(title=Text("on Azure: the vTPM behind the paravisor (Azure's firmware, not OVMF)"))
    for column in ("register", "on Azure", "made by", "why"):
        table.add_column(column, overflow="fold")
    for row in registers:
        status = Text(row.value or row.status, style="" if row.status == PREDICTED else "yellow")
        table.add_row(row.name, status, "; ".join(row.made_by), row.why)
    console.print(table)


def show_firmware(report: dict, console: Console) -> None:
    table = Table(title="TDVF firmware")
    for column in ("measurement", "SHA-384", "who decides it"):
        table.add_column(column, overflow="fold")
    for order, mrtd in report["mrtd"].items():
        table.add_row(f"MRTD ({order})", mrtd["value"], mrtd["qemu"])
    for event in report["rtmr0_events"]:
        table.add_row(f"RTMR0: {event['description']}", event["sha384"] or "[yellow]unknown[/]",
                      event["source"])
    console.print(table)
    console.print(f"[yellow]status[/]: {report['status']}; RTMR0 {report['rtmr0_status']}")


def print_shape(values: dict, shape: str) -> None:
    """One reference-value shape on stdout, the registers it leaves empty on stderr."""
    value = values[shape]
    click.echo(value if isinstance(value, str) else json.dumps(value, indent=2))
    for register, why in values["unknown"].items():
        click.echo(f"not filled: {register.upper()}: {why}", err=True)


@click.command("measure")
@click.argument("image", type=UserPath(path_type=Path), required=False)
@click.option("--allow-backing-file", "allow_backing", is_flag=True,
              help="Also read the backing files a qcow2 names (regular files, no loop): without "
                   "it such an image is refused, as its contents would come from this host.")
@click.option("--json", "as_json", is_flag=True,
              help="Print registers, unpredicted registers and the ordered event list as JSON.")
@click.option("--events", "show_events", is_flag=True, help="Also list every event (text output).")
@click.option("--log", "log_file", type=UserPath(dir_okay=False, path_type=Path),
              help="Compare with a real boot's event log, event by event: a TPM log "
                   "(binary_bios_measurements) or a TD's CCEL (/sys/firmware/acpi/tables/data/CCEL).")
@click.option("--secure-boot", is_flag=True,
              help="Predict a VM whose firmware enforces Secure Boot (with --log: as the log says).")
@click.option("--firmware", "firmware", type=UserPath(dir_okay=False, path_type=Path),
              help="A TDVF firmware image (OVMF.fd): MRTD and its own RTMR0 events from its metadata.")
@click.option("--format", "shape", type=click.Choice(FORMATS),
              help="Print only the reference values in one verifier's shape.")
@cloud_option("azure: also say which predicted registers apply on an Azure confidential VM, "
              "whose own firmware measures the early boot into the paravisor's vTPM.",
              names=(QEMU.name, AZURE.name))
def measure_command(image: Path | None, as_json: bool, show_events: bool, log_file: Path | None,
                    secure_boot: bool, firmware: Path | None, shape: str | None, allow_backing: bool,
                    cloud: Cloud):
    """Predict IMAGE's boot measurements offline: RTMR1/RTMR2 of a TD booted with TDVF, and
    PCR 4, 5, 8, 9, 11, 12, 14 (SHA-384) of a VM with a software TPM (the `boot --tpm` shape); with
    --firmware, MRTD and RTMR0's firmware events of a TDVF image."""
    if image is None:
        if firmware is None or log_file or shape:
            raise click.UsageError("give IMAGE (--log and --format need it), --firmware FILE, "
                                   "or both")
        report = measure_firmware_file(firmware)
        if as_json:
            click.echo(json.dumps({"firmware": report}, indent=2))
        else:
            show_firmware(report, Console())
        return
    firmware_report = measure_firmware_file(firmware) if firmware else None
    log = read_log(log_file) if log_file is not None else None  # a FIFO would hang it later
    prediction = predict(image, secure_boot or bool(log and log.secure_boot), allow_backing)
    document = prediction.to_dict()
    azure = azure_registers(prediction) if cloud is AZURE else None
    if azure is not None:
        document["cloud"] = {"name": cloud.name, "registers": [row.to_dict() for row in azure]}
    if firmware_report:
        document["firmware"] = firmware_report
        document["verifier"]["reference_values"] = reference_values(
            {"mrtd": firmware_report["mrtd"][SINGLE_PASS]["value"],
             **{f"rtmr{index}": prediction.rtmr(index) for index in PREDICTED_RTMRS}})
    failure, log_matches = _compare_log(log, document, image) if log is not None else (None, False)
    if prediction.unpredicted and not failure:
        failure = CheckFailed(f"{image}: unpredicted: {', '.join(sorted(prediction.unpredicted))}",
                              "the events named above are outside what measure models")
    if as_json and failure:
        failure.details = document  # the CLI prints it with the error as one document
        raise failure
    if shape:
        print_shape(document["verifier"]["reference_values"], shape)
    elif as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        _show_text(prediction, show_events, azure, firmware_report)
    if log_matches and log is not None:
        registers = ("RTMR1 and RTMR2" if log.kind == CCEL
                     else f"PCR {', '.join(map(str, PREDICTED_PCRS))}")
        click.echo(f"{log_file}: every event of {registers} as predicted", err=True)
    if failure:
        raise failure


def _compare_log(log: EventLog, document: dict, image: Path) -> tuple[CheckFailed | None, bool]:
    """A real boot's event log against the prediction: the failure naming what differs (None
    when every event is as predicted), and whether it matched."""
    verdict = verify(log, expected=Expected.from_measurements(document, str(image)))
    if verdict.ok:
        return None, True
    return CheckFailed("the event log differs from the prediction: "
                       + "; ".join(verdict.problems())), False


def _show_text(prediction: Prediction, show_events: bool, azure: list[Register] | None,
               firmware_report: dict | None) -> None:
    console = Console()
    if show_events:
        for step in prediction.steps:
            event, where = step.event, "TD" if step.in_td else "TPM only"
            console.print(f"PCR {event.pcr:>2} {event.digest.hex()[:16]}… "
                          f"{event.description.splitlines()[0]}  [{step.by}; {where}]",
                          markup=False, highlight=False, soft_wrap=True)
    render(prediction, console)
    if azure is not None:
        show_azure(azure, console)
    if firmware_report:
        show_firmware(firmware_report, console)


def measure_firmware_file(path: Path) -> dict:
    try:
        return measure_firmware(read_bytes(path, "--firmware", FIRMWARE_MAX_BYTES))
    except TdvfError as error:
        raise InputError(f"--firmware {path}: {error}", "give a TDVF image such as OVMF.fd")
