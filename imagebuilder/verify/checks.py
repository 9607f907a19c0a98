"""``tdx-image verify``: a real boot's event log against its TD quote and against an image's
predicted measurements, offline.

Checks, each run only when its input is given:
- log <-> quote: replaying the CCEL gives the quote's RTMR0-3;
- log <-> image: the log's events of the registers the image decides (RTMR1/RTMR2 of a CCEL,
  the predicted PCRs of a TPM log) are the predicted ones, event by event;
- always: events whose digest is by definition the SHA-384 of their own data (TCG PC Client
  PFP: separators, EFI actions, the GPT, UEFI variables; grub's ``grub_cmd: X`` and
  ``kernel_cmdline: X`` strings, whose digest is X's) carry that digest, so an edited digest
  is named even without an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.inputs import read_bytes
from ..measure import eventlog as ev
from ..measure.predict import load_measurements, predict
from ..measure.replay import CCEL, Difference, EventLog, differences, event_text, read_event_log
from .quote import SIGNATURE_NOT_CHECKED, QuoteError, TdQuote, parse_quote

LOG_MAX_BYTES = 16 << 20  # a CCEL area is 64 KiB-256 KiB, a TPM log tens of KiB
QUOTE_MAX_BYTES = 1 << 20  # a quote with its certificate chain is a few KiB

# Event types whose digest is the SHA-384 of the event data as logged.
SELF_DESCRIBED = (ev.EV_SEPARATOR, ev.EV_EFI_ACTION, ev.EV_EFI_GPT_EVENT,
                  ev.EV_EFI_VARIABLE_DRIVER_CONFIG, ev.EV_EFI_VARIABLE_AUTHORITY)
# grub's string events (grub-core/commands/tpm.c): logged with a prefix, the bare text hashed;
# checked against go-tdx-guest's public CCEL and a Debian 12 swtpm boot's log.
GRUB_STRING_PREFIXES = (b"grub_cmd: ", b"kernel_cmdline: ", b"module_cmdline: ")
TYPE_OF_NAME = {name: value for value, name in ev.EVENT_TYPE_NAMES.items()}


def event_type_of(name: str) -> int:
    return TYPE_OF_NAME[name] if name in TYPE_OF_NAME else int(name, 16)


def register_name(key: str) -> str:
    """A measurements record's register key ("rtmr 2", "pcr 8") as logs name it ("RTMR2",
    "PCR 8")."""
    kind, index = key.split()
    return f"RTMR{index}" if kind == "rtmr" else f"PCR {index}"


@dataclass(frozen=True)
class Expected:
    """What the image measures, from ``measure --json`` / measurements.json: (register, event)
    in order, per kind of log, and the registers it could not predict."""

    rtmr_events: list[tuple[str, ev.Event]]
    pcr_events: list[tuple[str, ev.Event]]
    rtmrs: list[str]  # "RTMR1", "RTMR2"
    pcrs: list[str]  # "PCR 4", ...
    unpredicted: dict[str, str]  # register ("RTMR2") -> why
    source: str

    @classmethod
    def from_measurements(cls, document: dict, source: str) -> Expected:
        """KeyError/ValueError/TypeError on a document that is not a measurements record."""
        def event(entry: dict) -> ev.Event:
            return ev.Event(entry["pcr"], event_type_of(entry["type"]), entry["description"],
                            bytes.fromhex(entry["sha384"]))

        return cls([(f"RTMR{entry['rtmr']}", event(entry)) for entry in document["rtmr_events"]],
                   # events measured after boot (systemd's PCR 11 phase words) are in no
                   # firmware log
                   [(f"PCR {entry['pcr']}", event(entry)) for entry in document["events"]
                    if not entry.get("after_boot")],
                   [f"RTMR{index}" for index in sorted(document["rtmr"], key=int)],
                   [f"PCR {index}" for index in sorted(document["pcr_sha384"], key=int)],
                   {register_name(key): why for key, why in document["unpredicted"].items()},
                   source)

    def for_log(self, log: EventLog) -> tuple[list[tuple[str, ev.Event]], list[str]]:
        """The expected events and the predicted registers to compare with ``log``."""
        events, registers = ((self.rtmr_events, self.rtmrs) if log.kind == CCEL
                             else (self.pcr_events, self.pcrs))
        return events, [name for name in registers if name not in self.unpredicted]


@dataclass
class Verdict:
    log: EventLog
    quote: TdQuote | None = None
    expected: Expected | None = None
    quote_mismatch: list[str] = field(default_factory=list)  # registers
    image_differences: list[Difference] = field(default_factory=list)
    unchecked_registers: list[str] = field(default_factory=list)  # unpredicted by the image
    inconsistent_events: list[str] = field(default_factory=list)

    @property
    def log_matches_quote(self) -> bool | None:
        return None if self.quote is None else not self.quote_mismatch

    @property
    def log_matches_image(self) -> bool | None:
        if self.expected is None:
            return None
        return not self.image_differences and not self.unchecked_registers

    @property
    def ok(self) -> bool:
        return (self.log_matches_quote is not False and self.log_matches_image is not False
                and not self.inconsistent_events)

    def problems(self) -> list[str]:
        """One sentence per failed check, for the error line."""
        found = [f"event {text}" for text in self.inconsistent_events]
        if self.quote_mismatch:
            found.append("the log does not replay to the quote's " + ", ".join(self.quote_mismatch))
        found += [str(difference) for difference in self.image_differences]
        if self.unchecked_registers:
            found.append(f"{self.expected.source if self.expected else 'the image'} does not "
                         f"predict {', '.join(self.unchecked_registers)}")
        return found

    def to_dict(self) -> dict:
        first = self.image_differences[0].to_dict() if self.image_differences else None
        return {
            "log": {"kind": self.log.kind, "events": len(self.log.measured)},
            "replayed": self.log.replayed(),
            "quote": self.quote.to_dict() if self.quote else None,
            "log_matches_quote": self.log_matches_quote,
            "quote_mismatch": self.quote_mismatch,
            "log_matches_image": self.log_matches_image,
            "image": self.expected.source if self.expected else None,
            "first_difference": first,
            "differences": [difference.to_dict() for difference in self.image_differences],
            "unchecked_registers": self.unchecked_registers,
            "inconsistent_events": self.inconsistent_events,
            "not_checked": SIGNATURE_NOT_CHECKED if self.quote else None,
            "ok": self.ok,
        }


def described_digest(event: ev.LoggedEvent) -> bytes | None:
    """The digest an event's own data prescribes, or None when the data does not say."""
    if event.event_type in SELF_DESCRIBED:
        return ev.sha384(event.data)
    if event.event_type == ev.EV_IPL and event.data.startswith(GRUB_STRING_PREFIXES):
        return ev.sha384(event.data.split(b": ", 1)[1].rstrip(b"\0"))
    return None


def inconsistent_events(log: EventLog) -> list[str]:
    """Events whose digest is not the one their data prescribes: the log was edited."""
    numbers: dict[str, int] = {}
    found = []
    for register, event in log.measured:
        numbers[register] = numbers.get(register, 0) + 1
        described = described_digest(event)
        if described is not None and event.sha384 != described:
            found.append(f"{numbers[register]} of {register} ({event_text(event)}) has a digest "
                         "that its data does not give: the log was altered")
    return found


def verify(log: EventLog, quote: TdQuote | None = None, expected: Expected | None = None) -> Verdict:
    """Every check its inputs allow (a quote needs a CCEL: the caller ensures it)."""
    verdict = Verdict(log, quote, expected, inconsistent_events=inconsistent_events(log))
    if quote is not None:
        replayed = log.replayed()
        verdict.quote_mismatch = [f"RTMR{index}" for index, value in enumerate(quote.rtmrs)
                                  if replayed[f"rtmr{index}"] != value.hex()]
    if expected is not None:
        events, registers = expected.for_log(log)
        wanted = expected.rtmrs if log.kind == CCEL else expected.pcrs
        verdict.unchecked_registers = [name for name in wanted if name not in registers]
        verdict.image_differences = differences(events, log, registers)
    return verdict


def read_log(path: Path) -> EventLog:
    try:
        return read_event_log(read_bytes(path, "--log", LOG_MAX_BYTES))
    except ev.EventLogError as error:
        raise InputError(f"--log {path}: {error}", "give a TD's CCEL (/sys/firmware/acpi/tables/"
                         "data/CCEL) or a TPM log (binary_bios_measurements)")


def read_quote(path: Path) -> TdQuote:
    try:
        return parse_quote(read_bytes(path, "--quote", QUOTE_MAX_BYTES))
    except QuoteError as error:
        raise InputError(f"--quote {path}: {error}", "give a binary TD quote, version 4 or 5")


def expected_of_image(image: Path, log: EventLog) -> Expected:
    """What ``image`` measures in the VM the log comes from (Secure Boot as the log says)."""
    return Expected.from_measurements(predict(image, bool(log.secure_boot)).to_dict(), str(image))


def verify_files(log_path: Path, quote_path: Path | None = None, image: Path | None = None,
                 measurements: Path | None = None) -> Verdict:
    """``tdx-image verify``'s inputs read (InputError on a bad or foreign one) and checked."""
    if image is not None and measurements is not None:
        raise InputError("--image and --measurements both say what the image measures",
                         "give one of them")
    log = read_log(log_path)
    quote = None
    if quote_path is not None:
        if log.kind != CCEL:
            raise InputError(f"--quote: {log_path} is a TPM log (PCRs), a TD quote holds RTMRs",
                             "give the TD's CCEL with its quote")
        quote = read_quote(quote_path)
    expected = None
    if image is not None:
        expected = expected_of_image(image, log)
    elif measurements is not None:
        document = load_measurements(measurements, lambda document: (
            Expected.from_measurements(document, str(measurements)), document.get("secure_boot", False)))
        expected, secure_boot = document
        if secure_boot != bool(log.secure_boot):
            raise InputError(f"--measurements {measurements} predict a boot with Secure Boot "
                             f"{'on' if secure_boot else 'off'}, the log's firmware had it "
                             f"{'on' if log.secure_boot else 'off'}",
                             "make them with measure --json"
                             + (" --secure-boot" if log.secure_boot else ""))
    return verify(log, quote, expected)
