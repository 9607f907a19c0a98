"""The one runner every external program goes through: real processes, real signals."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from imagebuilder.host import runner, signals
from imagebuilder.core.errors import HostError


def test_run_captures_output_and_status_in_the_c_locale():
    result = runner.run(["sh", "-c", 'echo "$LC_ALL"; echo oops >&2; exit 3'], text=True)
    assert (result.returncode, result.stdout, result.stderr) == (3, "C\n", "oops\n")
    assert runner.last_line(result) == "oops"


def test_run_feeds_input():
    assert runner.run(["cat"], input=b"abc").stdout == b"abc"


def test_a_missing_tool_names_its_package_on_debian_and_suse():
    with pytest.raises(HostError, match="qemu-img-not-here is not installed") as raised:
        runner.run(["qemu-img-not-here"])
    assert raised.value.hint == "install qemu-img-not-here"
    # On neither distribution family both are named.
    assert runner.install_hint("qemu-img", family=None) == "apt-get install qemu-utils, or zypper install qemu-tools"
    assert "mtools" in runner.install_hint("/usr/bin/mcopy", family=None)


def test_a_timeout_stops_the_whole_group(tmp_path):
    pidfile = tmp_path / "child"
    with pytest.raises(HostError, match="did not finish within 1 s"):
        runner.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], timeout=1)
    child = int(pidfile.read_text())
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_probe_is_empty_for_a_missing_or_hanging_program():
    assert runner.probe(["no-such-program-here"]) == ""
    assert runner.probe(["sleep", "5"], timeout=0.5) == ""
    assert runner.probe(["echo", "7.2"]).strip() == "7.2"


def test_leaving_the_block_ends_orphans_the_leader_left(tmp_path):
    """KIWI's apt-get and dpkg outlive KIWI: the group is stopped and reaped as we leave."""
    pidfile = tmp_path / "orphan"
    runner.adopt_orphans()
    with runner.Process(["sh", "-c", f"(trap '' TERM; exec sleep 300) & echo $! > {pidfile}"],
                        grace=0.5) as process:
        assert process.wait(5) == 0
        orphan = int(pidfile.read_text())
        os.kill(orphan, 0)  # still there after its parent exited
    with pytest.raises(ProcessLookupError):
        os.kill(orphan, 0)
    assert process.returncode == 0


def test_a_signal_forwards_the_programs_own_stop_signal(tmp_path):
    """KIWI gets SIGINT (it unwinds its mounts on KeyboardInterrupt), then its exit is awaited."""
    marker = tmp_path / "got-int"
    kiwi_like = ["sh", "-c", f"trap 'touch {marker}; exit 9' INT; sleep 30 & wait"]
    with signals.handled(), pytest.raises(signals.Interrupt), \
            runner.Process(kiwi_like, forward=signal.SIGINT, grace=5) as process:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)
    assert marker.exists()
    assert process.returncode == 9



DIRECT_PROCESS_USE = re.compile(r"^\s*(?:import|from)\s+subprocess\b|\bsubprocess\.|\bos\.execvp|"
                                r"\bos\.killpg\b|\bos\.kill\(", re.MULTILINE)


def test_no_module_but_the_runner_starts_or_signals_a_program():
    package = Path(runner.__file__).parents[1]
    offenders = [f"{path.relative_to(package)}: {match.group().strip()}"
                 for path in sorted(package.rglob("*.py"))
                 if path.name != "runner.py"
                 for match in DIRECT_PROCESS_USE.finditer(path.read_text())]
    assert offenders == []


def test_cleanup_after_a_signal_runs_to_its_end_and_work_started_then_is_stopped():
    """cleanup.release (umount, losetup) runs after the signal that stopped a build."""
    with signals.handled(), pytest.raises(signals.Interrupt), signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        cleanup = runner.run(["sh", "-c", "sleep 0.3; echo released"], text=True, forward=None)
        assert (cleanup.returncode, cleanup.stdout) == (0, "released\n")
        assert runner.run(["sleep", "30"], timeout=20).returncode == -signal.SIGTERM


def test_a_signal_under_an_earlier_policy_stops_no_later_program():
    with signals.handled(), pytest.raises(signals.Interrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert runner.run(["sh", "-c", "sleep 0.3"]).returncode == 0
