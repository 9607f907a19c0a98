"""The `boot` verb: boot a throwaway copy of an image and report the guest's self-check."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import click
from ..core.console import Console
from rich.markup import escape

from ..core.defaults import DEFAULT_BOOT_TIMEOUT_S
from ..core.errors import CheckFailed
from ..core.inputs import Seconds, UserPath
from ..vm.boot import BootResult, boot_image
from .context import cloud_option, pass_host


class BootProgress:
    """On a terminal: a spinner with the seconds elapsed of the timeout and the console's last
    line, while the guest boots."""

    def __init__(self, console: Console, what: str, timeout: float):
        self.what, self.timeout = what, timeout
        self.status = console.status(escape(what))

    def __enter__(self):
        self.status.start()
        return self

    def __exit__(self, *exc_info):
        self.status.stop()

    def __call__(self, elapsed: float, last_line: str) -> None:
        self.status.update(f"{escape(self.what)} [dim]{elapsed:.0f} s / {self.timeout:.0f} s[/]"
                           + (f"\n  [dim]{escape(last_line[:120])}[/]" if last_line else ""))


def verdict(result: BootResult, tdx: bool) -> str:
    """The closing line: what booted, as what it is.  Without --tdx a plain VM is the expected
    result, not a fault; with --tdx only a TD gets here (anything else raised)."""
    seconds = f"{result.seconds_to_selfcheck:.1f} s"
    if tdx:
        return f"PASS: booted as a TD under {result.accel} in {seconds}"
    as_what = "a TD" if result.selfcheck.get("td") else "a normal VM (not a TD, as launched)"
    return f"PASS: booted as {as_what} under {result.accel} in {seconds}"


@click.command("boot")
@click.argument("image", type=UserPath(path_type=Path))
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="auto: KVM where it works, else software emulation.")
@click.option("--tdx", is_flag=True, help="Boot as a TD; pass only if the guest says it is one.")
@click.option("--firmware", "--tdvf", "firmware", type=UserPath(path_type=Path),
              help="UEFI firmware (TDVF with --tdx).  [default: the host's OVMF]")
@click.option("--tpm", is_flag=True,
              help="Reference VM with a software TPM (swtpm); pass only if the guest's PCRs equal "
                   "`tdx-image measure`.")
@click.option("--secure-boot", is_flag=True,
              help="With Secure Boot enforced (the host's OVMF Secure Boot build, Microsoft's keys).")
@click.option("--event-log", type=UserPath(dir_okay=False, path_type=Path),
              help="Write the firmware's event log the guest printed to FILE (for `tdx-image "
                   "verify --log`); fail if it printed none.")
@click.option("--timeout", type=Seconds(1), default=DEFAULT_BOOT_TIMEOUT_S, show_default=True,
              help="Seconds to wait for the self-check line.")
@click.option("--console-log", type=UserPath(dir_okay=False, path_type=Path),
              help="Serial console log [default: IMAGE.console.log in the current directory].")
@click.option("--allow-backing-file", "allow_backing", is_flag=True,
              help="Also read the backing files a qcow2 names (regular files, no loop): without "
                   "it such an image is refused, as its contents would come from this host.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@cloud_option("Attach the disk as that cloud does (gcp: an emulated NVMe controller); azure's "
              "VMBus devices cannot be emulated, so an azure image is refused.")
@pass_host
def boot_command(host, image, accel, tdx, firmware, tpm, secure_boot, event_log, timeout,
                 console_log, allow_backing, as_json, cloud):
    """Boot a throwaway copy of IMAGE and report the guest's TDX self-check."""
    console = Console(stderr=True)
    display = BootProgress(console, f"booting {image.name}" + (" as a TD" if tdx else ""), timeout)
    live = console.is_terminal and not as_json
    try:
        with display if live else nullcontext():
            result = boot_image(image, accel=accel, tdx=tdx, tpm=tpm, timeout=timeout,
                                firmware=firmware, progress=display if live else None, host=host,
                                allow_backing=allow_backing, secure_boot=secure_boot,
                                event_log=event_log, cloud=cloud,
                                console_log=console_log or Path(f"{image.name}.console.log"))
    except CheckFailed:
        if not as_json:
            console.print(f"[red]FAIL[/]: boot test of {escape(str(image))}", soft_wrap=True)
        raise
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    check = result.selfcheck
    accel_note = f" ({result.fallback_reason})" if result.fallback_reason else ""
    click.echo(f"boot: {image} under {result.accel}{accel_note}, disk on {cloud.disk_interface} "
               f"as --cloud {cloud.name} attaches it")
    click.echo(f"self-check after {result.seconds_to_selfcheck:.1f} s: kernel {check.get('kernel')}, "
               f"TD: {'yes' if check.get('td') else 'no'}, "
               f"attestation: {'yes' if check.get('attestation') else 'no'}")
    click.echo(f"guest says: {check.get('reason')}")
    if result.firmware_note:
        click.echo(f"note: {result.firmware_note}")
    for index, pair in (result.measurements or {}).items():
        click.echo(f"{'PCR' if tpm else 'RTMR'} {index}: {pair['guest']} (as predicted)")
    if result.event_log:
        click.echo(f"event log: {result.event_log['events']} events, each as predicted")
    click.echo(f"console log: {result.console_log}")
    if result.event_log:
        click.echo(f"event log: {result.event_log}")
    click.echo(verdict(result, tdx))
