"""``tdx-image verify``: a real boot's event log against its TD quote and against an image's
predicted measurements, offline.

Checks, each run only when its input is given:
- log <-> quote: replaying the CCEL gives the quote's RTMR0-3;
- log <-> image: the log's events of the registers the image decides (RTMR1/RTMR2 of a CCEL,
  PCR 4, 5, 8, 9, 14 of a TPM log) are the predicted ones, event by event;
- always: events whose digest is by definition the SHA-384 of their own data (TCG PC Client
  PFP: separators, EFI actions, the GPT, UEFI variables) carry that digest, so an edited
  digest is named even without an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..measure import eventlog as ev
from ..measure.replay import CCEL, Difference, EventLog, differences
from .quote import SIGNATURE_NOT_CHECKED, TdQuote

# Event types whose digest is the SHA-384 of the event data as logged.
SELF_DESCRIBED = (ev.EV_SEPARATOR, ev.EV_EFI_ACTION, ev.EV_EFI_GPT_EVENT,
                  ev.EV_EFI_VARIABLE_DRIVER_CONFIG, ev.EV_EFI_VARIABLE_AUTHORITY)
TYPE_OF_NAME = {name: value for value, name in ev.EVENT_TYPE_NAMES.items()}


def event_type_of(name: str) -> int:
    return TYPE_OF_NAME[name] if name in TYPE_OF_NAME else int(name, 16)


@dataclass(frozen=True)
class Expected:
    """What the image measures, from ``measure --json`` / measurements.json: (register, event)
    in order, per kind of log, and the registers it could not predict."""

    rtmr_events: list[tuple[str, ev.Event]]
    pcr_events: list[tuple[str, ev.Event]]
    rtmrs: list[str]  # "RTMR1", "RTMR2"
    pcrs: list[str]  # "PCR 4", ...
    unpredicted: dict[str, str]
    source: str

    @classmethod
    def from_measurements(cls, document: dict, source: str) -> Expected:
        """KeyError/ValueError/TypeError on a document that is not a measurements record."""
        def event(entry: dict) -> ev.Event:
            return ev.Event(entry["pcr"], event_type_of(entry["type"]), entry["description"],
                            bytes.fromhex(entry["sha384"]))

        return cls([(f"RTMR{entry['rtmr']}", event(entry)) for entry in document["rtmr_events"]],
                   [(f"PCR {entry['pcr']}", event(entry)) for entry in document["events"]],
                   [f"RTMR{index}" for index in sorted(document["rtmr"], key=int)],
                   [f"PCR {index}" for index in sorted(document["pcr_sha384"], key=int)],
                   dict(document["unpredicted"]), source)

    def for_log(self, log: EventLog) -> tuple[list[tuple[str, ev.Event]], list[str]]:
        """The expected events and the predicted registers to compare with ``log``."""
        events, registers = ((self.rtmr_events, self.rtmrs) if log.kind == CCEL
                             else (self.pcr_events, self.pcrs))
        return events, [name for name in registers
                         if name.lower().replace("rtmr", "rtmr ") not in self.unpredicted]


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


def inconsistent_events(log: EventLog) -> list[str]:
    """Events whose digest should be the SHA-384 of their data and is not."""
    numbers: dict[str, int] = {}
    found = []
    for register, event in log.measured:
        numbers[register] = numbers.get(register, 0) + 1
        if event.event_type in SELF_DESCRIBED and event.sha384 != ev.sha384(event.data):
            found.append(f"{numbers[register]} of {register} ({ev.event_type_name(event.event_type)}) "
                         "has a digest that is not the SHA-384 of its data: the log was altered")
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
