"""Reference values in the shapes verifiers read, from what ``measure`` knows.

The image decides RTMR1 and RTMR2. MRTD is the firmware's (``measure --firmware`` computes it
from TDVF's metadata); RTMR0 holds the firmware's configuration and QEMU's ACPI tables, and
RTMR3 is extended at run time: no shape gets a value ``measure`` does not know, each says which
registers it leaves to the verifier and why.

- ``go-tdx-guest``: flags of google/go-tdx-guest ``check`` (``-mr_td``; ``-rtmrs`` takes four
  comma-separated values, an empty one is not checked).
- ``rvps``: a Confidential Containers Trustee RVPS message with "sample" provenance (a
  base64 JSON map of reference value names to accepted values); Trustee's default policy
  compares ``rtmr_1``, ``rtmr_2`` and ``mr_td`` with these names.
- ``ita``: an Intel Trust Authority appraisal policy (Rego over the token's ``tdx_mrtd``,
  ``tdx_rtmr0``..``tdx_rtmr3`` claims).
- ``dstack``: the register list of Dstack-TEE/dstack and flashbots-images, ``{"0": MRTD,
  "1": RTMR0, "2": RTMR1, "3": RTMR2, "4": RTMR3}``, null where unknown.
None of these was loaded into the verifier itself here (no network, no accounts): the shapes
are read from the projects' documentation and sources.
"""

from __future__ import annotations

import base64
import json

FORMATS = ("go-tdx-guest", "rvps", "ita", "dstack")
REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")
WHY_UNKNOWN = {
    "mrtd": "MRTD measures the TDVF firmware as QEMU loads it: give the firmware to "
            "`measure --firmware`, or take it from the platform's quote",
    "rtmr0": "RTMR0 holds the firmware's configuration and QEMU's ACPI tables, which depend on "
             "the VM's shape (memory, devices) and QEMU's version: take it from a reference TD "
             "of that shape",
    "rtmr3": "RTMR3 is extended at run time by the guest, not at boot",
}
RVPS_NAMES = {"mrtd": "mr_td", "rtmr0": "rtmr_0", "rtmr1": "rtmr_1", "rtmr2": "rtmr_2",
              "rtmr3": "rtmr_3"}


def unknown(registers: dict[str, str | None]) -> dict[str, str]:
    return {name: WHY_UNKNOWN.get(name, "not predicted (see unpredicted)")
            for name in REGISTERS if registers.get(name) is None}


def go_tdx_guest(registers: dict[str, str | None]) -> str:
    rtmrs = ",".join(registers.get(f"rtmr{index}") or "" for index in range(4))
    mrtd = f"-mr_td {registers['mrtd']} " if registers.get("mrtd") else ""
    return f"{mrtd}-rtmrs {rtmrs}"


def rvps(registers: dict[str, str | None]) -> dict:
    sample = {RVPS_NAMES[name]: [value] for name, value in registers.items() if value}
    return {"version": "0.1.0", "type": "sample",
            "payload": base64.b64encode(json.dumps(sample, sort_keys=True).encode()).decode()}


def ita(registers: dict[str, str | None]) -> str:
    claims = [f'\tinput.tdx_{name} == "{value}"' for name, value in registers.items() if value]
    return "\n".join(["default matches_tdx_policy = false", "", "matches_tdx_policy = true {",
                      "\tinput.tdx_is_debuggable == false", *claims, "}", ""])


def dstack(registers: dict[str, str | None]) -> dict[str, str | None]:
    return {str(index): registers.get(name) for index, name in enumerate(REGISTERS)}


SHAPES = {"go-tdx-guest": go_tdx_guest, "rvps": rvps, "ita": ita, "dstack": dstack}


def reference_values(registers: dict[str, str | None]) -> dict:
    """Every shape for ``registers`` (REGISTERS -> lowercase hex or None), with the registers
    none of them could fill."""
    known = {name: registers.get(name) for name in REGISTERS}
    return {"registers": known, "unknown": unknown(known),
            **{shape: SHAPES[shape](known) for shape in FORMATS}}
