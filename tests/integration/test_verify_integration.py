"""`verify` on the real debian image and the guest's own event log.

The log comes from a real boot of the image in the reference VM with Secure Boot on (`boot
--tpm --secure-boot --event-log`): with Secure Boot off Debian's grub starts the kernel without
its EFI stub, so Linux never receives the firmware's log. The same log is then checked against
the image, and against copies whose grub.cfg or kernel command line differ (edited with
debugfs, not with the code under test), where `verify` must fail and name the event.
"""

import json
import os

import pytest

from ..conftest import GRUB_CFG, image_with_grub_cfg, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guest_log(debian_image, tmp_path_factory):
    work = tmp_path_factory.mktemp("verify")
    log, scratch = work / "tpm.log", work / "tmp"
    scratch.mkdir()
    result = run_cli("boot", debian_image, "--tpm", "--secure-boot", "--event-log", log, "--json",
                     "--console-log", work / "console.log", "--timeout", 900,
                     env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # the boot itself already compared the guest's log with the prediction, event by event
    assert report["event_log"]["file"] == str(log) and report["event_log"]["differences"] == []
    return log, report


def test_the_guests_own_log_is_the_images_event_by_event(guest_log, debian_image):
    log, report = guest_log

    result = run_cli("verify", "--log", log, "--image", debian_image, "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["log"]["kind"] == "tpm" and document["log_matches_image"] is True
    # the replayed log is what the guest read from its TPM (a PCR the log never extends: zeros)
    guest = report["selfcheck"]["pcr_sha384"]
    assert {index: document["replayed"].get(f"pcr{index}", "0" * 96) for index in guest} == guest
    measured = run_cli("measure", debian_image, "--log", log, "--json")
    assert measured.returncode == 0, measured.stderr
    assert json.loads(measured.stdout)["secure_boot"] is True  # as the log's SecureBoot variable says


def test_a_different_grub_cfg_fails_naming_its_event(guest_log, debian_image, tmp_path):
    log, _ = guest_log
    variant = image_with_grub_cfg(debian_image, tmp_path, lambda text: text + "# changed\n")

    result = run_cli("verify", "--log", log, "--image", variant, "--json")

    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["log_matches_image"] is False
    (difference,) = document["differences"]  # the file's content only: commands are the same
    assert difference["register"] == "PCR 9"
    assert difference["expected"]["description"].endswith(GRUB_CFG)
    assert GRUB_CFG in difference["log"]["data"]


def test_a_different_kernel_command_line_fails_naming_its_event(guest_log, debian_image, tmp_path):
    log, _ = guest_log
    variant = image_with_grub_cfg(debian_image, tmp_path,
                                  lambda text: text.replace(" ro ", " ro tampered=1 ", 1))

    result = run_cli("verify", "--log", log, "--image", variant, "--json")

    assert result.returncode == 1
    document = json.loads(result.stdout)
    first = document["first_difference"]
    assert first["register"] == "PCR 8" and "tampered=1" in first["expected"]["description"]
    assert "tampered=1" not in first["log"]["data"]
    assert any(d["register"] == "PCR 9" for d in document["differences"])  # grub.cfg itself
    assert "PCR 8 event" in result.stderr
