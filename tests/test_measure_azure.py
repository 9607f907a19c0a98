"""`measure --cloud azure`: which predicted registers apply where Azure's firmware, behind the
paravisor, measures the early boot into a vTPM: the image's own components' registers as
predicted, the firmware's unknown, the RTMRs not what an Azure verifier checks."""

from __future__ import annotations

from imagebuilder.measure import eventlog as ev
from imagebuilder.measure.azure import AZURE_FIRMWARE, azure_registers
from imagebuilder.measure.predict import FIRMWARE, Prediction, Step
from tests.test_measure import sha384

SHIM, GRUB = "shim 15.8 (tpm.c)", "grub 2.12"
STUB, KERNEL = "systemd-stub 257.13 (stub.c measure_sections)", "linux 6.12 EFI stub"


def made(pcr: int, data: bytes, by: str) -> Step:
    return Step(ev.Event(pcr, ev.EV_IPL, data.decode(), sha384(data)), True, by)


def rows(prediction: Prediction) -> dict[str, tuple]:
    return {row.name: (row.status, row.value, row.made_by) for row in azure_registers(prediction)}


def test_the_images_components_registers_are_predicted_and_the_firmwares_unknown():
    prediction = Prediction("img", [
        made(4, b"Calling EFI Application from Boot Option", FIRMWARE), made(4, b"\0" * 4, FIRMWARE),
        made(5, b"\0" * 4, FIRMWARE), made(5, b"gpt", FIRMWARE), made(14, b"MokList", SHIM),
        made(4, b"grubx64.efi", SHIM), made(8, b"linux /vmlinuz", GRUB), made(9, b"/vmlinuz", GRUB)])
    view = rows(prediction)
    assert view["PCR 0-3, 6, 7"] == ("unknown", None, (AZURE_FIRMWARE,))
    # PCR 4: the firmware's action and separator, in Azure's firmware's order: unknown, even if
    # shim's measurement of grub is shim's own
    assert view["PCR 4"] == ("unknown", None, (AZURE_FIRMWARE, SHIM))
    assert view["PCR 5"] == ("unknown", None, (AZURE_FIRMWARE,))
    for index, by in ((8, GRUB), (9, GRUB), (14, SHIM)):
        assert view[f"PCR {index}"] == ("predicted", prediction.pcr(index), (by,))
    assert view["PCR 11"][0] == view["PCR 12"][0] == "predicted"  # nothing extends them
    assert view["RTMR 1"][0] == view["RTMR 2"][0] == "not checked"
    assert not any(FIRMWARE in by for row in view.values() for by in row[2])  # OVMF is not there


def test_a_uki_command_line_depends_on_the_firmwares_load_options_unless_secure_boot_is_on():
    steps = [made(11, b".cmdline", STUB), made(9, b"console=ttyS0", KERNEL)]
    view = rows(Prediction("img", steps))
    assert view["PCR 11"][0] == "predicted"
    assert view["PCR 9"][0] == view["PCR 12"][0] == "unknown"
    with_secure_boot = rows(Prediction("img", steps, secure_boot=True))
    assert with_secure_boot["PCR 9"] == ("predicted", Prediction("img", steps).pcr(9), (KERNEL,))
    assert with_secure_boot["PCR 12"][0] == "predicted"


def test_what_is_unpredicted_for_every_firmware_stays_unknown_with_its_reason():
    prediction = Prediction("img", [made(8, b"x", GRUB)], unpredicted={"pcr 8": "grub's script uses regexp"})
    status, value, _ = rows(prediction)["PCR 8"]
    assert (status, value) == ("unknown", None)
    assert "grub's script uses regexp" in next(row.why for row in azure_registers(prediction) if row.name == "PCR 8")
