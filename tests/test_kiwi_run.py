"""The KIWI runner: command line, phases, redaction, failure classification, signals.

A stand-in kiwi-ng (a shell script printing what KIWI prints) reaches the error paths; the
real KIWI runs in the integration tests.
"""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from imagebuilder.build import kiwi
from imagebuilder.core.errors import BuildError, CredentialsError, Interrupted, RepositoryError
from imagebuilder.distros.repos import Repository

REPO = Repository("oss", "https://download.opensuse.org/distribution/leap/15.5/repo/oss/", "rpm-md")


def fake_kiwi(tmp_path: Path, body: str) -> str:
    script = tmp_path / "kiwi-ng"
    script.write_text("#!/bin/bash\n" + body)
    script.chmod(0o755)
    return str(script)


def make_run(tmp_path, kiwi_path, **kwargs) -> kiwi.KiwiInvocation:
    return kiwi.KiwiInvocation(kiwi=kiwi_path, description=tmp_path / "desc", target_dir=tmp_path / "t",
                        cache_dir=tmp_path / "cache", repositories=[REPO], **kwargs)


def test_command_puts_global_options_first_and_pairs_credentials(tmp_path):
    sles = Repository("pool", "https://rmt.example/repo/x/", "rpm-md", authenticated=True)
    run = make_run(tmp_path, "kiwi-ng", profile="SLES", credentials_file=tmp_path / "c")
    run.repositories = [sles, REPO]
    command = run.command()
    assert command[:6] == ["kiwi-ng", "--debug", "--shared-cache-dir", str(tmp_path / "cache"),
                           "--profile", "SLES"]
    assert command.index("system") > command.index("--profile")
    assert command.count("--add-repo") == 2
    # one credentials entry, for the leading authenticated repository only
    assert command.count("--add-repo-credentials") == 1


def test_phases_are_reported_in_order_and_log_is_redacted(tmp_path):
    script = fake_kiwi(tmp_path, r"""
echo '[ INFO    ]: 10:00:00 | Preparing new root system'
printf '[ INFO    ]: Processing: [##   ] 10%%\r[ INFO    ]: Processing: [#####] 100%%\n'
echo '[ DEBUG   ]: 10:00:01 | repo https://SCC_user:hunter2@rmt.example/repo'
echo '[ INFO    ]: 10:00:02 | Installing system (chroot) for build type: oem'
echo '[ INFO    ]: 10:00:03 | Result files:'
""")
    phases = []
    log = tmp_path / "build.log"
    kiwi.execute(make_run(tmp_path, script), log, phases.append, secrets=["hunter2", "SCC_user:hunter2"])
    assert phases == ["prepare", "install packages", "done"]
    text = log.read_text()
    assert "hunter2" not in text and "https://***@rmt.example/repo" in text
    assert "[ INFO    ]: Processing: [##   ] 10%" in text.splitlines()  # \r ends a line too


@pytest.mark.parametrize("error_line, expected", [
    ("KiwiRepositorySetupError: Repo http://x is not reachable", RepositoryError),
    ("KiwiCommandError: apt-get: Failed to fetch http://m/debian/Release", RepositoryError),
    ("KiwiCommandError: zypper: HTTP 401 Unauthorized", CredentialsError),
    ("KiwiDiskGeometryError: too small", BuildError),
])
def test_kiwi_failures_are_classified_by_exception_name(tmp_path, error_line, expected):
    script = fake_kiwi(tmp_path, f"echo '[ ERROR   ]: 10:00:00 | {error_line}'; exit 1\n")
    with pytest.raises(expected) as raised:
        kiwi.execute(make_run(tmp_path, script), tmp_path / "log", lambda phase: None)
    assert error_line.split(":")[0] in str(raised.value)
    assert str(tmp_path / "log") in str(raised.value)


def test_sigterm_stops_kiwi_and_raises_interrupted(tmp_path):
    marker = tmp_path / "kiwi-saw-sigint"
    script = fake_kiwi(tmp_path, f"trap 'touch {marker}; exit 1' INT\n"
                                 "echo '[ INFO    ]: 10:00:00 | Preparing new root system'\n"
                                 "while true; do sleep 0.1; done\n")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(Interrupted, match="SIGTERM"):
        kiwi.execute(make_run(tmp_path, script), tmp_path / "log", lambda phase: None)
    assert marker.exists(), "KIWI must get SIGINT to unwind its own mounts"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_signal_leaves_no_orphans_of_kiwi(tmp_path):
    """KIWI exits on Ctrl-C while the apt-get/dpkg it started keep running (issue 7, defect 5):
    whatever is left of its process group is stopped and reaped, and a second signal changes
    nothing."""
    apt = tmp_path / "apt.pid"
    script = fake_kiwi(tmp_path, f"(trap '' INT; exec sleep 300) & echo $! > {apt}\n"
                                 "trap 'sleep 1; exit 1' INT\n"  # KIWI unwinding its mounts
                                 "echo '[ INFO    ]: 10:00:00 | Installing bootstrap packages'\n"
                                 "while true; do sleep 0.1; done\n")
    for delay in (1.0, 1.5):
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(Interrupted, match="SIGINT"):
        kiwi.execute(make_run(tmp_path, script), tmp_path / "log", lambda phase: None)
    time.sleep(1)  # the second signal arrived while the first was being handled
    pid = int(apt.read_text())
    assert not Path(f"/proc/{pid}").exists(), "KIWI's child survived it"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_esp_fallback_puts_the_shim_first_on_path(tmp_path):
    run = make_run(tmp_path, "kiwi-ng", esp_fallback_dir=tmp_path / "esp")
    run.prepare_esp_fallback()
    env = run.environment()
    assert env["PATH"].split(":")[0] == str(tmp_path / "esp" / "bin")
    for name in kiwi.SHIMMED_COMMANDS:
        assert (tmp_path / "esp" / "bin" / name).resolve() == kiwi.HOSTSHIM
    assert env["TDX_IMAGE_ESP_STATE"] == str(tmp_path / "esp" / "state")
