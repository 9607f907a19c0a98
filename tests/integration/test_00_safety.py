"""Safety with the real parts: a user's directory is never replaced, concurrent builds lock
each other out cleanly, and a signal in any phase (KIWI, publish, validate, boot test; the
validate and boot verbs) ends with exit 130, children stopped and reaped, nothing left behind
and the log in OUT.failed/.

KIWI is interrupted for real, early (bootstrap, install) where it is cheap.  The later phases run
on the shared real image: a stand-in kiwi-ng "builds" by copying it, so publish, validation and
the boot test are the real ones.  Named to run first: the interrupted real builds come before
the session's real build, which then shows the host was left fit to build.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagebuilder.build import cleanup
from imagebuilder.build.kiwi import PHASES
from tests.conftest import TDX_IMAGE, error_line, run_cli, schema_errors

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]


def processes_under(directory: Path) -> list[str]:
    """Processes that name ``directory`` on their command line, or work or are chrooted in it
    (KIWI's apt-get and dpkg run chrooted in the image root)."""
    found, root = [], str(directory.resolve())
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) == os.getpid():
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            places = [os.readlink(proc / "cwd"), os.readlink(proc / "root")]
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:  # ended while we looked
            continue
        if root in cmdline or any(place == root or place.startswith(root + "/") for place in places):
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


class Run:
    """A tdx-image process whose stderr is read line by line as it goes."""

    def __init__(self, args: list, env: dict | None = None, command=TDX_IMAGE):
        self.process = subprocess.Popen([*command, *map(str, args)], cwd=PROJECT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.seen: list[str] = []

    def wait_for(self, marker: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        for line in self.process.stderr:
            self.seen.append(line)
            if marker in line:
                return
            assert time.monotonic() < deadline, f"no {marker!r} in time:\n{''.join(self.seen)}"
        raise AssertionError(f"ended before {marker!r}:\n{''.join(self.seen)}")

    def signal(self, *signals: signal.Signals, group: bool = False, gap: float = 1.0) -> None:
        for index, sig in enumerate(signals):
            if index:
                time.sleep(gap)
            if group:  # as a terminal's Ctrl-C: the whole process group
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        out, err = self.process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, out,
                                           "".join(self.seen) + err)


def assert_interrupted_cleanly(result: subprocess.CompletedProcess, work: Path, out: Path | None,
                               signal_name: str) -> None:
    assert result.returncode == 130, result.stderr
    assert signal_name in error_line(result)
    assert cleanup.leftovers(work) == ([], [])
    assert processes_under(work) == []
    temp = work / "tmp"
    assert not temp.exists() or list(temp.iterdir()) == []
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if ".staging-" in p.name]
        failed = out.parent / f"{out.name}.failed"
        assert (failed / "build.log").is_file(), result.stderr
        record = json.loads((failed / "failure.json").read_text())
        assert record["exit_code"] == 130 and "build.log" in record["files"]
        assert str(failed) in error_line(result) or "KIWI" in error_line(result)


def test_concurrent_builds_refuse_or_wait_and_a_double_ctrl_c_leaves_nothing(tmp_path):
    """Build A holds --out a and the package cache.  B into the same --out refuses at once
    naming A; C into another --out waits for the cache, starts when A is stopped (SIGTERM while
    it installs packages), and is itself interrupted by two Ctrl-C to its process group (issue 7,
    defects 4 and 5).  The next real build (the session's) shows the host is left fit to build."""
    a_out, c_out = tmp_path / "a" / "debian", tmp_path / "c" / "debian"
    # --no-incremental: a cached prepared root would skip the bootstrap and install waited for.
    a = Run(["build", "debian", "--out", a_out, "--no-incremental"])
    a.wait_for("… bootstrap")

    b = run_cli("build", "debian", "--out", a_out, "--no-incremental", timeout=60)  # at once
    assert b.returncode == 3
    assert f"another build (pid {a.process.pid}) is writing to {a_out}" in error_line(b)

    c = Run(["build", "debian", "--out", c_out, "--no-incremental"])
    c.wait_for("… wait for the package cache")
    assert f"(build pid {a.process.pid} is using it)" in c.seen[-1]

    a.wait_for("… install packages")
    time.sleep(5)  # KIWI installs packages in its chroot: /proc, /sys and /dev are bind-mounted
    staging = [p for p in a_out.parent.iterdir() if ".staging-" in p.name]
    assert staging and cleanup.leftovers(staging[0])[0], "A should hold mounts when interrupted"
    a.signal(signal.SIGTERM)
    assert_interrupted_cleanly(a.finish(), tmp_path / "a", a_out, "SIGTERM")

    c.wait_for("… bootstrap")  # it got the cache once A let go of it
    c.signal(signal.SIGINT, signal.SIGINT, group=True)
    assert_interrupted_cleanly(c.finish(), tmp_path / "c", c_out, "SIGINT")


@pytest.fixture
def standin(debian_image, tmp_path) -> dict:
    """Environment and command for a build whose kiwi-ng copies the shared real image and its
    package list (with --no-incremental: there is no root to prepare)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)  # kiwi-ng is looked up beside it
    lines = "\n".join(f"echo '[ INFO    ]: 10:00:00 | {marker}'" for marker, _ in PHASES)
    packages = debian_image.with_suffix(".packages")  # KIWI's package list, for the SBOM
    kiwi = bin_dir / "kiwi-ng"
    kiwi.write_text(f"""#!/bin/bash
# Stand-in kiwi-ng: KIWI's phase lines, then a copy of the real image as its result.
while [ $# -gt 0 ]; do [ "$1" = --target-dir ] && target=$2; shift; done
{lines}
mkdir -p "$target"
cp --sparse=always {debian_image} "$target/{debian_image.name}"
cp {packages} "$target/{packages.name}"
echo '{{"disk_format_image": {{"filename": "'"$target/{debian_image.name}"'"}},
       "image_packages": {{"filename": "'"$target/{packages.name}"'"}}}}' > "$target/kiwi.result.json"
""")
    kiwi.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    site = subprocess.run([sys.executable, "-c", "import kiwi, os; print(os.path.dirname(os.path.dirname(kiwi.__file__)))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, PYTHONPATH=f"{site}:{PROJECT}", TMPDIR=str(tmp_path / "tmp"))
    return {"env": env, "command": [str(bin_dir / "python"), "-m", "imagebuilder"]}


def test_the_standin_build_publishes_and_replaces_an_earlier_output(standin, tmp_path):
    out = tmp_path / "out" / "debian"
    for attempt in (1, 2):
        result = subprocess.run([*standin["command"], "build", "debian", "--out", str(out),
                                 "--no-incremental"],
                                cwd=PROJECT, env=standin["env"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        record = json.loads((out / "build.json").read_text())
        assert record["validation"]["ok"] and (out / record["image"]).is_file()
    for name in ("build", "validation", "measurements"):
        text = (out / f"{name}.json").read_text()
        assert schema_errors(name, json.loads(text)) == [] and ".staging-" not in text, name
    assert sorted(p.name for p in out.parent.iterdir()) == ["debian"]
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("marker, delay, signals, group, boot_test", [
    ("… publish", 0.0, [signal.SIGTERM], False, False),
    ("… validate", 0.0, [signal.SIGTERM], False, False),
    ("… validate", 0.0, [signal.SIGINT, signal.SIGINT], True, False),
    ("… measure", 0.3, [signal.SIGTERM], False, False),
    ("… boot test", 3.0, [signal.SIGHUP], False, True),
    ("… boot test", 3.0, [signal.SIGTERM, signal.SIGTERM], False, True),
], ids=["SIGTERM in publish", "SIGTERM in validate", "Ctrl-C twice in validate", "SIGTERM in measure",
        "SIGHUP in the boot test", "SIGTERM twice in the boot test"])
def test_a_signal_after_kiwi(standin, tmp_path, marker, delay, signals, group, boot_test):
    """Issue 7, defect 3: after KIWI, SIGTERM left the staging directory, validate's raw disk
    and a running qemu-img behind."""
    out = tmp_path / "out" / "debian"
    run = Run(["build", "debian", "--out", out, "--no-incremental",
               *(["--boot-test"] if boot_test else [])],
              env=standin["env"], command=standin["command"])
    run.wait_for(marker)
    time.sleep(delay)
    run.signal(*signals, group=group)
    assert_interrupted_cleanly(run.finish(), tmp_path, out, signals[0].name)


@pytest.mark.parametrize("signals", [[signal.SIGINT, signal.SIGINT], [signal.SIGTERM]],
                         ids=["Ctrl-C twice", "SIGTERM"])
def test_a_signal_to_the_boot_verb(debian_image, tmp_path, signals):
    """(An interrupted validate verb: tests/test_locks_and_signals.py, with a slow qemu-img.)"""
    temp = tmp_path / "tmp"
    temp.mkdir()
    run = Run(["boot", debian_image, "--console-log", tmp_path / "console.log", "--accel", "tcg"],
              env=dict(os.environ, TMPDIR=str(temp)))
    deadline = time.monotonic() + 120
    while not list(temp.glob("*/overlay.qcow2")):
        assert time.monotonic() < deadline and run.process.poll() is None, run.finish().stderr
        time.sleep(0.05)
    time.sleep(1.0)  # QEMU running the firmware
    run.signal(*signals, group=len(signals) > 1)
    assert_interrupted_cleanly(run.finish(), tmp_path, None, signals[0].name)
