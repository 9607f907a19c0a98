"""Measurement registers and event logs: extend, replay, and the TCG crypto-agile log format.

A register starts as zeros and each event extends it: ``R = H(R || digest)``. The same events
land in TPM PCRs (reference VM with a software TPM) and, through TDVF's mapping, in TDX RTMRs.
``parse_tcg2_log`` reads the firmware's log (``binary_bios_measurements``) so a real boot can be
compared with a prediction event by event.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

SHA384_BYTES = 48

# TCG PC Client Platform Firmware Profile, event types used by a shim -> grub -> kernel boot.
EV_POST_CODE = 0x1
EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_ACTION = 0x5
EV_EVENT_TAG = 0x6
EV_S_CRTM_VERSION = 0x8
EV_IPL = 0xD
EV_PLATFORM_CONFIG_FLAGS = 0xA
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0

EVENT_TYPE_NAMES = {value: name for name, value in globals().items() if name.startswith("EV_")}

TPM_ALG_SHA256, TPM_ALG_SHA384 = 0xB, 0xC


def event_type_name(event_type: int) -> str:
    return EVENT_TYPE_NAMES.get(event_type, f"0x{event_type:x}")


@dataclass(frozen=True)
class Event:
    """One measurement: the PCR it extends, its type, what it is, and its SHA-384 digest."""

    pcr: int
    event_type: int
    description: str
    digest: bytes

    def to_dict(self) -> dict:
        return {"pcr": self.pcr, "type": event_type_name(self.event_type),
                "description": self.description, "sha384": self.digest.hex()}


def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def extend(register: bytes, digest: bytes) -> bytes:
    return sha384(register + digest)


def replay(digests) -> bytes:
    """The value of a register that started as zeros after extending each digest in order."""
    register = bytes(SHA384_BYTES)
    for digest in digests:
        register = extend(register, digest)
    return register


def rtmr_of_pcr(pcr: int) -> int | None:
    """TDVF's MapPcrToMrIndex: PCR 1, 7 -> RTMR0; 2-6 -> RTMR1; 8-15 -> RTMR2 (PCR 0 is MRTD)."""
    if pcr in (1, 7):
        return 0
    if 2 <= pcr <= 6:
        return 1
    if 8 <= pcr <= 15:
        return 2
    return None


@dataclass(frozen=True)
class LoggedEvent:
    pcr: int
    event_type: int
    digests: dict[int, bytes]  # TPM algorithm id -> digest
    data: bytes

    @property
    def sha384(self) -> bytes | None:
        return self.digests.get(TPM_ALG_SHA384)


UNUSED_CCEL_RECORD = b"\xff" * 8  # MR index and event type of a 0xFF-filled log area


class EventLogError(Exception):
    """The bytes are not a TCG crypto-agile event log."""


def parse_tcg2_log(log: bytes) -> list[LoggedEvent]:
    """Events of a TCG2 (crypto-agile) log; the first, SHA-1-format Spec ID event is skipped.

    The log ends at the end of the bytes, at a zero-filled record (a TPM log area) or at an
    all-ones record (a TD's CCEL log area, which TDVF fills with 0xFF)."""
    try:
        return _parse(log)
    except struct.error:
        raise EventLogError("cut off: a record runs past the end of the log") from None


def _parse(log: bytes) -> list[LoggedEvent]:
    if len(log) < 32:
        raise EventLogError("too short for a TCG event log")
    _, _, _, event_size = struct.unpack_from("<II20sI", log, 0)
    header = log[32 : 32 + event_size]
    if not header.startswith(b"Spec ID Event03\0"):
        raise EventLogError("no 'Spec ID Event03' header: not a crypto-agile log")
    (count,) = struct.unpack_from("<I", header, 24)
    sizes = {}
    for index in range(count):
        algorithm, size = struct.unpack_from("<HH", header, 28 + 4 * index)
        sizes[algorithm] = size
    position, events = 32 + event_size, []
    while position < len(log):
        if log[position : position + 8] == UNUSED_CCEL_RECORD:
            break
        pcr, event_type, digest_count = struct.unpack_from("<III", log, position)
        if event_type == 0 and digest_count == 0:  # zero-filled tail of a TPM log area
            break
        position += 12
        digests = {}
        for _ in range(digest_count):
            (algorithm,) = struct.unpack_from("<H", log, position)
            if algorithm not in sizes:
                raise EventLogError(f"digest algorithm 0x{algorithm:x} at byte {position} is "
                                    "not in the header")
            digests[algorithm] = log[position + 2 : position + 2 + sizes[algorithm]]
            position += 2 + sizes[algorithm]
            if len(digests[algorithm]) != sizes[algorithm]:
                raise EventLogError("cut off: a digest runs past the end of the log")
        (data_size,) = struct.unpack_from("<I", log, position)
        data = log[position + 4 : position + 4 + data_size]
        if len(data) != data_size:
            raise EventLogError(f"cut off: the event at byte {position} runs past the end of the log")
        position += 4 + data_size
        events.append(LoggedEvent(pcr, event_type, digests, data))
    return events
