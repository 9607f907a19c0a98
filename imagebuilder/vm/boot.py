"""The boot test: boot a throwaway copy of an image with UEFI firmware under QEMU and wait for
the guest's ``TDX-SELFCHECK {json}`` line on the serial console.

Last step of the flow (... artifacts -> validation -> boot). The image is never written: QEMU
runs a qcow2 overlay backed by it, in a temporary directory. QEMU runs in its own process group
(runner.Process), which is stopped and reaped whatever happens (timeout, error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path


from ..core.defaults import DEFAULT_BOOT_TIMEOUT_S
from ..distros.clouds import QEMU, Cloud
from ..host import requirements, runner, signals
from ..core.errors import CheckFailed, HostError, InputError, Interrupted
from ..core.inputs import require_regular_file, require_writable_file
from ..host.virt import KVM_FAILURE, read, running
from .launch import Launch, choose_accel
from ..measure import predict
from ..measure.eventlog import EventLogError
from ..host.facts import HostFacts
from ..host.requirements import require_ovmf, require_tdx_host
from ..schemas import SCHEMA_VERSION
from ..image.cloudformats import unpack_gce_tar
from ..image.disk import GCE_TAR
from ..image.disk import image_format as disk_format
from ..measure.replay import EventLog, read_event_log
from ..verify.checks import Expected, verify

SELFCHECK_PREFIX = "TDX-SELFCHECK "
# The self-check writes the firmware's event log, where the kernel has one, to the VM's second
# serial port, framed (the firmware and grub write there too): base64 lines between these, the
# end line carrying the log's SHA-256.
EVENT_LOG = re.compile(r"^TDX-EVENTLOG-BEGIN\s*$(.*?)^TDX-EVENTLOG-END ([0-9a-f]{64})\s*$",
                       re.MULTILINE | re.DOTALL)
# CSI sequences (colours, cursor moves) and charset switches that systemd and GRUB print.
ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-9;?=]*[A-Za-z]|[()][A-Za-z0-9])")
POLL_SECONDS = 0.5
TAIL_LINES = 6
SWTPM = "swtpm"
SWTPM_START_SECONDS = 10.0

# What a console that does not reach the self-check shows, in order of precedence: (pattern,
# reason, whether the boot can no longer succeed, so waiting longer is pointless).
# OVMF names the virtio disk's boot entry "UEFI Misc Device", an NVMe disk's "UEFI QEMU NVMe
# Ctrl SERIAL NAMESPACE".
CONSOLE_DIAGNOSES = (
    (r'failed to load Boot\w+ "UEFI (Misc Device|QEMU NVMe Ctrl)', "the firmware found no EFI boot loader on the "
     "disk (EFI system partition empty or without EFI/BOOT?)", True),
    (r"UEFI Interactive Shell", "the firmware found nothing to boot and started its shell", True),
    (r"No bootable option or device was found", "the firmware found no bootable device", True),
    (r"grub rescue>", "GRUB stopped at its rescue prompt (configuration or modules not found)", True),
    # drivers/md/dm-verity-target.c: a block of a verity device does not match its hash tree
    (r"device-mapper: verity: \S+ data block \d+ is corrupted", "a block of the dm-verity root failed its "
     "hash check: the root partition was changed after the image was sealed", True),
    (r"Kernel panic", "the kernel panicked", True),
    (r"emergency mode", "the system entered emergency mode", True),
    (r"login:", "the guest reached a login prompt without a self-check line "
                "(is tdx-selfcheck.service enabled in the image?)", False),
)


@dataclass(frozen=True)
class BootResult:
    accel: str
    fallback_reason: str  # why auto did not use KVM; "" when it did or was not asked to choose
    seconds_to_selfcheck: float  # from QEMU's start to the self-check line
    selfcheck: dict
    console_log: Path
    # With --tpm (PCRs) or --tdx (RTMRs): register -> {"predicted", "guest"}, all equal
    measurements: dict | None = None
    # With --tdx: what the TDVF means for attestation when it records no RTMR events
    firmware_note: str | None = None
    # When the guest sent its event log: {"events": N, "differences": [...] (with --tpm),
    # "file": where --event-log wrote it, or None}
    event_log: dict | None = None

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "accel": self.accel, "fallback_reason": self.fallback_reason,
                "seconds_to_selfcheck": round(self.seconds_to_selfcheck, 1),
                "selfcheck": self.selfcheck, "console_log": str(self.console_log),
                "measurements": self.measurements, "firmware_note": self.firmware_note,
                "event_log": self.event_log}


def console_text(raw: str) -> str:
    return ANSI_ESCAPE.sub("", raw).replace("\r", "")


def parse_selfcheck(console: str) -> dict | None:
    """The JSON object of the first complete self-check line, or None (yet)."""
    text = console_text(console)
    decoder = json.JSONDecoder()
    start = text.find(SELFCHECK_PREFIX)
    while start >= 0:
        try:
            value, _ = decoder.raw_decode(text, start + len(SELFCHECK_PREFIX))
        except ValueError:  # not JSON, or a line QEMU has not finished writing
            value = None
        if isinstance(value, dict):
            return value
        start = text.find(SELFCHECK_PREFIX, start + 1)
    return None


def parse_event_log(channel: str) -> bytes | None:
    """The firmware's event log the guest's self-check sent; None when it sent none."""
    framed = EVENT_LOG.search(channel)
    if framed is None:
        return None
    encoded, digest = framed.groups()
    try:
        log = base64.b64decode("".join(encoded.split()), validate=True)
    except binascii.Error as error:
        raise CheckFailed(f"the guest's event log arrived damaged ({error})")
    if hashlib.sha256(log).hexdigest() != digest:
        raise CheckFailed("the guest's event log arrived damaged (its SHA-256 differs)")
    return log


def read_sent_log(log: bytes) -> EventLog:
    try:
        return read_event_log(log)
    except EventLogError as error:
        raise CheckFailed(f"the guest sent an event log that cannot be read: {error}")


def log_differences(log: EventLog, prediction: dict, image: Path) -> list[str]:
    """Where the guest's own event log parts from the prediction, event by event."""
    return verify(log, expected=Expected.from_measurements(prediction, str(image))).problems()


def diagnose(console: str) -> tuple[str, bool]:
    """(why the console shows no self-check, whether the boot can no longer succeed)."""
    text = console_text(console)
    for pattern, reason, final in CONSOLE_DIAGNOSES:
        if re.search(pattern, text):
            return reason, final
    return ("the console shows no known failure" if text.strip() else "the console stayed empty"), False


def last_lines(console: str, count: int = TAIL_LINES) -> list[str]:
    return [line.strip() for line in console_text(console).splitlines() if line.strip()][-count:]


def create_overlay(image: Path, image_format: str, overlay: Path) -> None:
    """A qcow2 ``overlay`` backed by ``image`` (a fixed VHD through qemu's vpc driver); a GCE
    tar's disk.raw is unpacked beside the overlay first (a sparse file, removed with the
    overlay's directory) and backs it as raw."""
    if image_format == GCE_TAR:
        unpacked = overlay.with_name("disk.raw")
        unpack_gce_tar(image, unpacked)
        image, image_format = unpacked, "raw"
    result = runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image_format,
                         "-b", str(image.resolve()), str(overlay)], text=True)
    if result.returncode != 0:
        raise InputError(f"cannot create an overlay on {image}: {result.stderr.strip()}")


def wait_for_selfcheck(process: runner.Process, console_log: Path, output: Path,
                       timeout: float, accel: str,
                       progress: Callable[[float, str], None] | None = None) -> tuple[dict, float]:
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        console = read(console_log)
        if progress:
            progress(elapsed, (last_lines(console, 1) or [""])[0])
        selfcheck = parse_selfcheck(console)
        if selfcheck is not None:
            return selfcheck, elapsed
        reason, final = diagnose(console)
        if final:
            raise failure(f"the boot stopped after {elapsed:.0f} s", reason, console, console_log)
        errors = read(output)
        if KVM_FAILURE in errors:
            raise HostError(f"KVM stopped the guest after {elapsed:.0f} s ({KVM_FAILURE})",
                            "use --accel auto or tcg")
        if process.poll() is not None:
            why = (f"QEMU exited with status {process.returncode} after {elapsed:.0f} s "
                   "(the guest reset or powered off, or QEMU failed)")
            qemu_said = errors.strip().splitlines()
            raise failure(why, reason, console, console_log, qemu_said[-1] if qemu_said else "")
        if elapsed > timeout:
            raise failure(f"no self-check line within {timeout:.0f} s under {accel}", reason,
                          console, console_log)
        time.sleep(POLL_SECONDS)


def failure(what: str, reason: str, console: str, console_log: Path,
            qemu_said: str = "") -> CheckFailed:
    parts = [what, reason]
    if qemu_said:
        parts.append(f"QEMU: {qemu_said}")
    parts.append("last console lines: " + " | ".join(last_lines(console)))
    return CheckFailed("boot test failed: " + "; ".join(parts), f"console log: {console_log}")


@contextmanager
def software_tpm(work: Path):
    """swtpm (TPM 2.0) with a fresh state in ``work``; yields its control socket for QEMU.

    ``--terminate`` ends it when QEMU disconnects; it is stopped and reaped like QEMU anyway,
    and its state goes with ``work``.
    """
    state = work / "swtpm"
    state.mkdir()
    socket = state / "swtpm.sock"
    args = [SWTPM, "socket", "--tpm2", "--tpmstate", f"dir={state}", "--terminate",
            "--ctrl", f"type=unixio,path={socket}", "--log", f"file={state / 'swtpm.log'}"]
    with running(args, state / "swtpm.out") as process:
        deadline = time.monotonic() + SWTPM_START_SECONDS
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                said = (read(state / "swtpm.out") + read(state / "swtpm.log")).strip().splitlines()
                raise HostError(f"swtpm did not start: {said[-1] if said else 'no output'}")
            time.sleep(0.05)
        yield socket


def compare_measurements(predicted: dict[str, str | None], guest: dict, kind: str,
                         log_differences: tuple[str, ...] = ()) -> dict:
    """register -> {"predicted", "guest"}; a CheckFailed naming every register that differs
    (and where the guest's event log parts from the prediction, when it has one)."""
    compared = {index: {"predicted": value, "guest": guest.get(index)}
                for index, value in predicted.items()}
    wrong = []
    for index, pair in compared.items():
        if pair["predicted"] is None:
            wrong.append(f"{kind} {index} (unpredicted)")
        elif pair["guest"] is None:
            wrong.append(f"{kind} {index} (not reported by the guest)")
        elif pair["guest"] != pair["predicted"]:
            wrong.append(f"{kind} {index} (guest {pair['guest'][:12]}…, "
                         f"predicted {pair['predicted'][:12]}…)")
    if wrong:
        where = f"; its event log: {'; '.join(log_differences)}" if log_differences else ""
        raise CheckFailed(f"boot test failed: the guest's {kind}s differ from "
                          f"`tdx-image measure`: {', '.join(wrong)}{where}",
                          "compare with tdx-image measure --json IMAGE")
    return compared


def _keep_event_log(log: bytes | None, destination: Path, tdx: bool) -> None:
    """``--event-log``: write the log the guest sent, or say why there is none."""
    if log is None and tdx:
        raise CheckFailed("the TD sent no event log: its kernel shows no CCEL "
                          "(/sys/firmware/acpi/tables/data/CCEL)",
                          "is the firmware TDVF with TdTcg2Dxe, and ACPI on?")
    if log is None:
        raise CheckFailed("the guest printed no event log: its kernel has none (with Secure "
                          "Boot off Debian's grub starts the kernel without its EFI stub, "
                          "which is what hands the firmware's log to Linux)",
                          "boot with --secure-boot")
    destination.write_bytes(log)


# Why QEMU cannot attach a disk the way a cloud does, by the cloud's disk interface.
NOT_EMULATED = {"vmbus": "its VMBus devices (storvsc disk, netvsc NIC) cannot be emulated by QEMU"}


def _refuse_what_cannot_go_together(image: Path, tdx: bool, tpm: bool, secure_boot: bool,
                                    event_log: Path | None, cloud: Cloud) -> None:
    if not cloud.emulated:
        why = NOT_EMULATED.get(cloud.disk_interface, f"QEMU cannot attach {cloud.disk_interface} devices")
        raise InputError(f"an image for {cloud.title} cannot be booted here: {why}; it is checked "
                         "offline only", f"tdx-image validate --cloud {cloud.name} {image}")
    require_regular_file(image, "image")
    if tpm and tdx:
        raise InputError("--tpm and --tdx are different VMs", "boot once with each")
    if secure_boot and tdx:
        raise InputError("--secure-boot is a plain VM's firmware", "drop it with --tdx")
    if event_log is not None:
        require_writable_file(event_log, "--event-log")


def boot_image(image: Path, *, accel: str = "auto", tdx: bool = False, tpm: bool = False,
               timeout: float = DEFAULT_BOOT_TIMEOUT_S, console_log: Path, firmware: Path | None = None,
               progress: Callable[[float, str], None] | None = None,
               host: HostFacts | None = None, allow_backing: bool = False, secure_boot: bool = False,
               event_log: Path | None = None, cloud: Cloud = QEMU) -> BootResult:
    """Boot a throwaway copy of ``image`` and return the guest's self-check report.

    With ``tdx`` the image is launched as a TD and passes only if the guest says it is one (and,
    where its kernel exposes RTMRs, only if RTMR1/2 equal the prediction). With ``tpm`` it boots
    in the reference VM with a software TPM and passes only if the guest's PCR 4, 5, 8, 9, 11, 12, 14
    equal what ``tdx-image measure`` predicts and its event log, where the guest sent one, has
    the predicted events.  ``firmware`` is the UEFI firmware (TDVF with ``tdx``), by default the
    host's, its Secure Boot build with ``secure_boot``; ``event_log``: where to write the
    firmware's event log the guest sent (a TD's CCEL with ``tdx``, else the TPM log; the TD
    path has not run on a TDX host here); ``progress`` is called while waiting with the
    seconds elapsed and the console's last line.  ``cloud``: the disk is attached as that cloud
    attaches it (Google Cloud: an emulated NVMe controller); a cloud whose devices QEMU cannot
    emulate (Azure's VMBus) is refused.
    """
    image, console_log = Path(image), Path(console_log)
    _refuse_what_cannot_go_together(image, tdx, tpm, secure_boot, event_log, cloud)
    host = host or HostFacts()
    requirements.require("boot", *(["boot:tpm"] if tpm else []), context=requirements.Context(host))
    image_format = disk_format(image, allow_backing)  # a truncated qcow2 fails here, not after the timeout
    tdvf = require_tdx_host(firmware, host) if tdx else None
    firmware_note = host.td_firmware_note(tdvf) if tdvf else None
    ovmf = None if tdx else require_ovmf(firmware, host, secure_boot)
    chosen, fallback_reason = choose_accel(accel, tdx, host)
    prediction = (predict(image, secure_boot, allow_backing).to_dict() if tpm
                  else None)  # offline, before a long boot
    console_log.parent.mkdir(parents=True, exist_ok=True)
    console_log.unlink(missing_ok=True)
    try:
        with signals.handled(), tempfile.TemporaryDirectory(prefix="tdx-image-boot-") as work, \
                ExitStack() as stack:
            overlay = Path(work) / "overlay.qcow2"
            create_overlay(image, image_format, overlay)
            socket = stack.enter_context(software_tpm(Path(work))) if tpm else None
            channel = Path(work) / "channel"
            launch = Launch(disk=overlay, accel=chosen, tdx=tdx, tdvf=tdvf, firmware=ovmf,
                            serial=f"file:{console_log}", tpm_socket=socket, channel=channel,
                            disk_interface=cloud.disk_interface)
            with running(launch.qemu_args(), Path(work) / "qemu.out") as process:
                selfcheck, seconds = wait_for_selfcheck(process, console_log,
                                                        Path(work) / "qemu.out", timeout, chosen,
                                                        progress)
            log = parse_event_log(read(channel))
    except KeyboardInterrupt:
        raise Interrupted(f"boot test interrupted by {signals.received_name()}; QEMU was stopped") from None
    if tdx and selfcheck.get("td") is not True:
        raise CheckFailed(f"the guest booted but is not running as a TD: {selfcheck.get('reason')}",
                          f"console log: {console_log}")
    sent = read_sent_log(log) if log is not None else None
    if event_log is not None:
        _keep_event_log(log, event_log, tdx)
    measurements, differences = None, []
    if prediction is not None:  # with tpm
        differences = log_differences(sent, prediction, image) if sent is not None else []
        measurements = compare_measurements(prediction["pcr_sha384"],
                                            selfcheck.get("pcr_sha384") or {}, "PCR",
                                            tuple(differences))
        if differences:  # equal registers from other events: the prediction's story is wrong
            raise CheckFailed("boot test failed: the guest's event log differs from `tdx-image "
                              f"measure`: {'; '.join(differences)}", "compare with tdx-image verify --log")
    # kernels before 6.16 do not expose RTMRs; a TDVF without TdTcg2Dxe extends none
    elif tdx and selfcheck.get("rtmr") and firmware_note is None:
        predicted = predict(image, allow_backing=allow_backing).to_dict()["rtmr"]
        measurements = compare_measurements(predicted, selfcheck["rtmr"], "RTMR")
    received = None if sent is None else {"events": len(sent.measured), "differences": differences,
                                          "file": str(event_log) if event_log else None}
    return BootResult(chosen, fallback_reason, seconds, selfcheck, console_log, measurements,
                      firmware_note, received)
