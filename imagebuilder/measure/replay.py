"""A real boot's event log as a verifier reads it: which registers it extends, what they hold
after replaying it, and where it parts from a prediction.

Two kinds of log, told apart by what they record:
- a TPM log (``/sys/kernel/security/tpm0/binary_bios_measurements``): events name TPM PCRs, and
  the firmware's own events land in PCR 0;
- a TD's CC event log (CCEL: the ACPI ``CCEL`` table's log area, as
  ``/sys/firmware/acpi/tables/data/CCEL`` gives it): SHA-384 only, events name an MR index,
  1-3 = RTMR0-2 and 4 = RTMR3 (UEFI 2.10 38.4.1; edk2 ``TdTcg2Dxe``), never PCR 0.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from itertools import zip_longest

from . import eventlog as ev

TPM, CCEL = "tpm", "ccel"
RTMR_COUNT = 4
CCEL_TABLE_SIGNATURE = b"CCEL"  # the ACPI table that points at the log, not the log
EVENT_TEXT_BYTES = 80
UTF16_TEXT = re.compile(rb"(?:[\x20-\x7e]\x00){3,}")


@dataclass(frozen=True)
class EventLog:
    kind: str  # TPM or CCEL
    events: list[ev.LoggedEvent]

    def register(self, event: ev.LoggedEvent) -> str:
        """"RTMR0".."RTMR3" for a CCEL (MR index - 1), "PCR n" for a TPM log."""
        return f"RTMR{event.pcr - 1}" if self.kind == CCEL else f"PCR {event.pcr}"

    @property
    def measured(self) -> list[tuple[str, ev.LoggedEvent]]:
        """(register, event) of every event that extends a register, in log order
        (EV_NO_ACTION records only inform)."""
        return [(self.register(event), event) for event in self.events
                if event.event_type != ev.EV_NO_ACTION]

    @property
    def secure_boot(self) -> bool | None:
        """The SecureBoot variable the firmware measured (UEFI_VARIABLE_DATA: GUID, name length,
        data length, UTF-16 name, data); None when the log has no such event."""
        for _, event in self.measured:
            if event.event_type != ev.EV_EFI_VARIABLE_DRIVER_CONFIG or len(event.data) < 32:
                continue
            name_length, data_length = struct.unpack_from("<QQ", event.data, 16)
            name = event.data[32 : 32 + 2 * name_length].decode("utf-16-le", errors="replace")
            if name == "SecureBoot":
                value = event.data[32 + 2 * name_length : 32 + 2 * name_length + data_length]
                return value == b"\x01"
        return None

    def replayed(self) -> dict[str, str]:
        """Register name ("rtmr0", "pcr4") -> lowercase hex after replaying the log's SHA-384
        digests; a CCEL gives all four RTMRs (48 zero bytes where nothing was extended)."""
        names = ([f"RTMR{index}" for index in range(RTMR_COUNT)] if self.kind == CCEL
                 else sorted({register for register, _ in self.measured},
                             key=lambda name: int(name.split()[1])))
        return {name.replace(" ", "").lower():
                ev.replay(event.sha384 or b"" for register, event in self.measured
                          if register == name).hex()
                for name in names}


def read_event_log(data: bytes) -> EventLog:
    """The log in ``data``; EventLogError when it is not one (with what it looks like instead)."""
    if data.startswith(CCEL_TABLE_SIGNATURE):
        raise ev.EventLogError("this is the ACPI CCEL table, which only points at the log: give "
                               "its log area (/sys/firmware/acpi/tables/data/CCEL)")
    events = ev.parse_tcg2_log(data)
    missing = [number for number, event in enumerate(events, start=1)
               if event.event_type != ev.EV_NO_ACTION and event.sha384 is None]
    if missing:
        raise ev.EventLogError(f"event {missing[0]} has no SHA-384 digest: a log with a SHA-384 "
                               "bank is needed")
    measured = [event for event in events if event.event_type != ev.EV_NO_ACTION]
    is_ccel = (all(1 <= event.pcr <= RTMR_COUNT for event in measured)
               and all(set(event.digests) == {ev.TPM_ALG_SHA384} for event in measured))
    return EventLog(CCEL if is_ccel else TPM, events)


def event_text(event: ev.LoggedEvent) -> str:
    """What a person recognises an event by: its type and its data as text where it is text
    (an action, a grub command), else the longest UTF-16 string in it (a device path's file
    name, a variable's name), else its size."""
    data = event.data[:EVENT_TEXT_BYTES * 4]
    text = data.rstrip(b"\0")
    if text and all(32 <= byte < 127 or byte in b"\t\n" for byte in text):
        shown = text[:EVENT_TEXT_BYTES].decode()
    else:
        strings = UTF16_TEXT.findall(data)
        shown = (max(strings, key=len).decode("utf-16-le") if strings
                 else f"{len(event.data)} bytes")
    return f"{ev.event_type_name(event.event_type)} {shown!r}"


@dataclass(frozen=True)
class Difference:
    """The first event of ``register`` where a log and the expected events part ways."""

    register: str
    number: int  # 1-based among the register's events
    expected: ev.Event | None  # None: the log has more events than expected
    logged: ev.LoggedEvent | None  # None: the log ends early

    def to_dict(self) -> dict:
        expected = self.expected
        return {"register": self.register, "event": self.number,
                "expected": expected and {"type": ev.event_type_name(expected.event_type),
                                          "description": expected.description,
                                          "sha384": expected.digest.hex()},
                "log": self.logged and {"type": ev.event_type_name(self.logged.event_type),
                                        "data": event_text(self.logged),
                                        "sha384": (self.logged.sha384 or b"").hex()}}

    def __str__(self) -> str:
        ours = repr(self.expected.description[:EVENT_TEXT_BYTES]) if self.expected else "nothing more"
        theirs = event_text(self.logged) if self.logged else "nothing more"
        return f"{self.register} event {self.number}: expected {ours}, the log has {theirs}"


def differences(expected: list[tuple[str, ev.Event]], log: EventLog,
                registers: list[str]) -> list[Difference]:
    """Per register in ``registers``, the first event where the log and ``expected`` ((register,
    event) in order) part ways; empty when every register's events agree."""
    found = []
    for register in registers:
        mine = [event for name, event in expected if name == register]
        theirs = [event for name, event in log.measured if name == register]
        for number, (want, got) in enumerate(zip_longest(mine, theirs), start=1):
            if want is None or got is None or want.digest != got.sha384:
                found.append(Difference(register, number, want, got))
                break
    return found
