"""Which predicted registers apply on an Azure confidential VM (``measure --cloud azure``).

Azure runs a TDX confidential VM's guest behind a paravisor that offers it a vTPM; the guest's
UEFI firmware is Azure's, not OVMF/TDVF, and it measures the early boot into that vTPM (Azure,
"Confidential VM overview" and "Guest attestation": the verifier checks a vTPM quote whose key
the paravisor binds to the TD's report).  What the image's own components measure after the
firmware (shim's MOK lists, grub's commands and files, systemd-stub's sections, the kernel EFI
stub's command line and initrd) is theirs wherever they run, through EFI_TCG2_PROTOCOL as in the
reference VM's swtpm; what the firmware measures (PCR 0-7: its code and settings, the
separators, PCR 4's and 5's own events and their order) is Azure's and unknown here.  None of
this has run on Azure (no account here): the rows say what the components do, not what an Azure
boot was seen to produce.
"""

from __future__ import annotations

from dataclasses import dataclass

from .predict import FIRMWARE, PREDICTED_PCRS, PREDICTED_RTMRS, Prediction

PREDICTED, UNKNOWN, NOT_CHECKED = "predicted", "unknown", "not checked"
AZURE_FIRMWARE = "Azure's guest UEFI firmware and the paravisor (not OVMF/TDVF)"


@dataclass(frozen=True)
class Register:
    name: str  # "PCR 8", "RTMR 1"
    status: str  # PREDICTED, UNKNOWN or NOT_CHECKED
    value: str | None  # the SHA-384 bank's value when predicted
    made_by: tuple[str, ...]  # who extends it
    why: str

    def to_dict(self) -> dict:
        return {"register": self.name, "status": self.status, "sha384": self.value,
                "made_by": list(self.made_by), "why": self.why}


def azure_registers(prediction: Prediction) -> list[Register]:
    """The vTPM's PCRs as an Azure verifier reads them: predicted where only the image's
    components extend them, unknown where Azure's firmware does; and the RTMRs, which it does
    not check."""
    uki = any("systemd-stub" in step.by for step in prediction.steps)
    rows = [Register("PCR 0-3, 6, 7", UNKNOWN, None, (AZURE_FIRMWARE,),
                     "the firmware's code, settings and Secure Boot policy: not predicted by "
                     "tdx-image for any firmware")]
    for index in PREDICTED_PCRS:
        steps = [step for step in prediction.steps if step.event.pcr == index]
        made_by = tuple(dict.fromkeys(step.by for step in steps))
        firmware = sum(FIRMWARE in step.by for step in steps)
        if firmware:
            components = tuple(by for by in made_by if FIRMWARE not in by)
            row = Register(f"PCR {index}", UNKNOWN, None, (AZURE_FIRMWARE, *components),
                           f"{firmware} of its {len(steps)} events are the firmware's (actions, "
                           "separator, GPT, hashes of what it loads) in its own order; the "
                           "image's events are in --json's list, for a verifier replaying the log")
        elif f"pcr {index}" in prediction.unpredicted:
            row = Register(f"PCR {index}", UNKNOWN, None, made_by,
                           f"not predicted for any firmware: {prediction.unpredicted[f'pcr {index}']}")
        elif uki and index in (9, 12) and not prediction.secure_boot:
            row = Register(f"PCR {index}", UNKNOWN, None, made_by or ("systemd-stub",),
                           "with Secure Boot off systemd-stub 257 uses load options the firmware "
                           "passes (stub.c use_load_options; PCR 12, and the kernel stub's "
                           "command line in PCR 9); whether "
                           "Azure's does is unknown (predicted with --secure-boot)")
        else:
            row = Register(f"PCR {index}", PREDICTED, prediction.pcr(index),
                           made_by or ("nothing: no component of this boot extends it",),
                           "only the image's components extend it, as through swtpm in the "
                           "reference VM (verified there, not on Azure)")
        rows.append(row)
    for index in PREDICTED_RTMRS:
        rows.append(Register(f"RTMR {index}", NOT_CHECKED, None, ("unknown: not the guest's boot",),
                             "the guest's boot measures into the paravisor's vTPM: an Azure "
                             "verifier checks its quote (bound to the TD report by the "
                             "paravisor), not a TDVF boot's RTMRs"))
    return rows
