"""Locks between builds and the one signal policy, on real processes (no root needed)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from imagebuilder.host import locks, signals
from imagebuilder.core.errors import HostError
from tests.conftest import TDX_IMAGE, error_line

PROJECT = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    """Neither gone nor a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "LOCK_DIR", tmp_path / "locks")
    return tmp_path / "locks"


def holder(lock_dir: Path, kind: str, path: Path) -> subprocess.Popen:
    """Another build: a process holding the lock until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from imagebuilder.host import locks
        locks.LOCK_DIR = Path({str(lock_dir)!r})
        lock = locks.Lock({kind!r}, Path({str(path)!r}))
        assert lock.try_acquire()
        print("held", flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               cwd=PROJECT)
    assert process.stdout.readline() == "held\n"
    return process


def test_a_second_build_into_the_same_out_refuses_at_once_naming_the_first(lock_dir, tmp_path):
    other = holder(lock_dir, "out", tmp_path / "out")
    try:
        # A lock that waited would get the --out once the holder exits, and not raise.
        with pytest.raises(HostError, match=f"another build \\(pid {other.pid}\\) is writing to"):
            locks.lock_out(tmp_path / "out")
        with locks.lock_out(tmp_path / "other-out"):  # a different --out is free
            pass
    finally:
        other.kill()
        other.wait()
    with locks.lock_out(tmp_path / "out"):  # a killed build leaves no stale lock
        pass


def test_a_build_waits_for_the_package_cache_and_says_so(lock_dir, tmp_path):
    other = holder(lock_dir, "cache", tmp_path / "cache")
    messages = []
    try:
        threading.Timer(1.0, other.kill).start()
        started = time.monotonic()
        with locks.lock_cache(tmp_path / "cache", messages.append):
            waited = time.monotonic() - started
    finally:
        other.kill()
        other.wait()
    assert messages == [f"wait for the package cache {tmp_path / 'cache'} "
                        f"(build pid {other.pid} is using it)"]
    assert waited >= 0.9


def run_python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_every_signal_raises_once_and_cleanup_runs_to_its_end(tmp_path, sig):
    """The first signal interrupts the work; a second one during the cleanup changes nothing."""
    staging = tmp_path / "staging"
    process = run_python(f"""
        import time
        from pathlib import Path
        from imagebuilder.host import signals
        staging = Path({str(staging)!r})
        staging.mkdir()
        try:
            with signals.handled():
                try:
                    print("working", flush=True)
                    time.sleep(60)
                finally:
                    with signals.deferred():
                        print("cleaning", flush=True)
                        time.sleep(1)
                        staging.rmdir()
        except signals.Interrupt as interrupt:
            print("interrupted by", signals.received_name(), flush=True)
            raise SystemExit(130)
    """)
    assert process.stdout.readline() == "working\n"
    process.send_signal(sig)
    assert process.stdout.readline() == "cleaning\n"
    process.send_signal(sig)
    assert process.stdout.read() == f"interrupted by {sig.name}\n"
    assert process.wait() == 130, process.stderr.read()
    assert not staging.exists()


def test_a_signal_inside_a_deferred_block_is_raised_when_it_ends(tmp_path):
    process = run_python("""
        import os, signal
        from imagebuilder.host import signals
        steps = []
        try:
            with signals.handled():
                with signals.deferred():
                    os.kill(os.getpid(), signal.SIGTERM)
                    steps.append("finished the block")
                steps.append("after the block")
        except signals.Interrupt:
            print(steps)
    """)
    out, err = process.communicate(timeout=30)
    assert out == "['finished the block']\n", err


@pytest.fixture
def slow_qemu_img(tmp_path):
    """A qemu-img that reads any file as a qcow2 and takes its time to check it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "qemu-img"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        echo $$ >> {tmp_path}/qemu-img.pids
        case "$1" in
          info) echo '{{"format": "qcow2", "cluster-size": 65536, "virtual-size": 4294967296}}';;
          check) exec sleep 60;;
        esac
        """))
    script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("signals_sent", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]],
                         ids=["SIGTERM", "Ctrl-C twice"])
def test_an_interrupted_validate_leaves_no_qemu_img(tmp_path, slow_qemu_img, signals_sent):
    """Issue 7, defect 3: SIGTERM during validate left temporary files and a running qemu-img."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    image = tmp_path / "image.qcow2"
    image.write_bytes(b"QFI\xfb" + bytes(1020))
    pids = tmp_path / "qemu-img.pids"
    env = dict(os.environ, PATH=f"{slow_qemu_img}:{os.environ['PATH']}", TMPDIR=str(temp))
    process = subprocess.Popen([*TDX_IMAGE, "validate", str(image), "--json"], cwd=PROJECT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (pids.exists() and len(pids.read_text().split()) == 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # qemu-img check is running
    for sig in signals_sent:
        process.send_signal(sig)
        time.sleep(0.2)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert error_line(subprocess.CompletedProcess([], 130, out, err)) == \
        f"error: interrupted by {signals_sent[0].name}"
    assert json.loads(out) == {"ok": False, "error": f"interrupted by {signals_sent[0].name}",
                               "exit_code": 130}
    assert list(temp.iterdir()) == []
    assert len(pids.read_text().split()) == 2
    assert not [pid for pid in map(int, pids.read_text().split()) if alive(pid)]


def test_the_policy_is_restored_after_use():
    before = {sig: signal.getsignal(sig) for sig in signals.HANDLED}
    with signals.handled():
        with signals.handled():  # nested: a no-op
            assert signal.getsignal(signal.SIGHUP) is signals._handler
        assert signal.getsignal(signal.SIGHUP) is signals._handler
    assert {sig: signal.getsignal(sig) for sig in signals.HANDLED} == before
