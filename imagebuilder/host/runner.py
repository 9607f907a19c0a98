"""Every external program tdx-image starts, started one way.

- Each runs in a process group of its own (a terminal's Ctrl-C reaches us, not it) and, while
  it runs, the one signal policy (signals.py) stops that group: the program's ``forward``
  signal at once, SIGKILL after ``grace`` seconds.  Cleanup that must run to its end (umount,
  losetup after an interrupted build) asks for ``forward=None``: the policy leaves it alone.
- Leaving a ``Process`` block stops and reaps what is left of the group, leader or orphans
  (SIGTERM, then SIGKILL), whatever ended the block.
- A missing program is a HostError naming the package that has it (``TOOLS``, one table for
  Debian and SUSE hosts); a program that outlives its timeout is stopped and is a HostError.
- Programs run with ``LC_ALL=C``: callers parse their output.
- ``Redactor`` masks secrets in whatever a program printed before it reaches a log or a message.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from . import os_release, signals
from ..core.errors import HostError

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
PR_SET_PDEATHSIG = 1
STOP_SECONDS = 5.0
POLL_SECONDS = 0.1
DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
Completed = subprocess.CompletedProcess


@dataclass(frozen=True)
class Tool:
    debian: str  # the Debian package(s) that have it
    suse: str  # the SUSE package(s) that have it


# Every host program tdx-image or KIWI runs, and where to get it.
TOOLS: dict[str, Tool] = {
    "blkid": Tool("util-linux", "util-linux"),
    "cp": Tool("coreutils", "coreutils"),
    "dpkg-deb": Tool("dpkg", "dpkg"),
    "apt-get": Tool("apt", "apt"),
    "findmnt": Tool("util-linux", "util-linux"),
    "losetup": Tool("mount", "util-linux"),
    "lsblk": Tool("util-linux", "util-linux"),
    "lz4": Tool("lz4", "lz4"),
    "mcopy": Tool("mtools", "mtools"),
    "mdeltree": Tool("mtools", "mtools"),
    "mdir": Tool("mtools", "mtools"),
    "mkfs.ext4": Tool("e2fsprogs", "e2fsprogs"),
    "mkfs.vfat": Tool("dosfstools", "dosfstools"),
    "partx": Tool("util-linux", "util-linux"),
    "podman": Tool("podman runc", "podman"),  # runc: containers/containers.conf on cgroups v1
    "qemu-img": Tool("qemu-utils", "qemu-tools"),
    "qemu-system-x86_64": Tool("qemu-system-x86", "qemu-x86"),
    "rpm": Tool("rpm", "rpm"),
    "rsync": Tool("rsync", "rsync"),
    "sgdisk": Tool("gdisk", "gptfdisk"),
    "swtpm": Tool("swtpm", "swtpm"),
    "umount": Tool("mount", "util-linux"),
    "veritysetup": Tool("cryptsetup-bin", "cryptsetup"),
    "zypper": Tool("zypper", "zypper"),
}


THIS_HOST = "this host"  # install_hint's default family: read from os-release


def install_hint(*tools: str, family: str | None = THIS_HOST) -> str:
    """The command that installs ``tools`` on the host's distribution ``family`` (by default
    this host's; on others: the Debian and the SUSE one)."""
    known = [TOOLS.get(Path(tool).name) for tool in tools]
    if None in known:
        return "install " + ", ".join(tool for tool, entry in zip(tools, known) if entry is None)
    debian = " ".join(sorted({entry.debian for entry in known if entry}))
    suse = " ".join(sorted({entry.suse for entry in known if entry}))
    if family == THIS_HOST:
        family = os_release.host_family()
    if family == "debian":
        return f"apt-get install {debian}"
    if family == "suse":
        return f"zypper install {suse}"
    return f"apt-get install {debian}, or zypper install {suse}"


def missing(tools: Iterable[str]) -> list[str]:
    """Those of ``tools`` that are not on PATH."""
    return [tool for tool in tools if not shutil.which(tool)]


def require(*tools: str) -> None:
    """A HostError naming the first missing tool and its package."""
    for tool in missing(tools):
        raise HostError(f"{tool} is not installed", install_hint(tool))


class Redactor:
    """Replaces each secret (longest first) by ``***``."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def environment() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}


def adopt_orphans() -> None:
    """Become the reaper of orphaned descendants (KIWI's apt-get, dpkg), so stopping a group
    can wait for them."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _die_with_parent() -> None:
    """In the child: the kernel kills it if we die without cleaning up (SIGKILL, a crash)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    """A program running in its own process group for the length of a ``with`` block.

    ``forward`` is what a signal received meanwhile sends to the group (SIGINT lets KIWI unwind
    its mounts; SIGTERM for the rest; None: nothing, the program must finish); ``grace`` seconds
    later the group is killed.  Leaving the block stops whatever is left of the group and reaps
    it.  ``die_with_parent``: the kernel kills the program if we die without a chance to.
    ``env`` is the program's whole environment (by default ours, with ``LC_ALL=C``).
    """

    def __init__(self, args: Sequence[str], *, stdin: Any = DEVNULL, stdout: Any = None,
                 stderr: Any = None, env: dict[str, str] | None = None, cwd: Path | None = None,
                 forward: int | None = signal.SIGTERM, grace: float = STOP_SECONDS,
                 die_with_parent: bool = False):
        self.args = [str(arg) for arg in args]
        self._popen_options = {"stdin": stdin, "stdout": stdout, "stderr": stderr, "cwd": cwd,
                               "env": env if env is not None else environment()}
        self.forward, self.grace, self.die_with_parent = forward, grace, die_with_parent
        self.popen: subprocess.Popen | None = None
        self._timers: list[threading.Timer] = []

    def __enter__(self) -> Self:
        try:
            self.popen = subprocess.Popen(
                self.args, start_new_session=True,
                # PR_SET_PDEATHSIG can only be set in the child itself
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
                **self._popen_options)
        except FileNotFoundError:
            raise HostError(f"{self.args[0]} is not installed", install_hint(self.args[0])) from None
        self._forwarding: AbstractContextManager = (
            signals.on_signal(self._signalled) if self.forward else nullcontext())
        self._forwarding.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop()
        finally:
            self._forwarding.__exit__(None, None, None)
            for timer in self._timers:
                timer.cancel()

    @property
    def pid(self) -> int:
        assert self.popen is not None, "the process has not been started"
        return self.popen.pid

    @property
    def stdout(self) -> IO[Any] | None:
        return self.popen.stdout if self.popen else None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen else None

    def poll(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def wait(self, timeout: float | None = None) -> int:
        """The leader's exit status; a HostError if it is still running after ``timeout``."""
        assert self.popen is not None, "the process has not been started"
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._timed_out(timeout) from None

    def communicate(self, input: bytes | str | None = None,
                    timeout: float | None = None) -> tuple[Any, Any]:
        assert self.popen is not None, "the process has not been started"
        try:
            return self.popen.communicate(input, timeout)
        except subprocess.TimeoutExpired:
            raise self._timed_out(timeout) from None

    def _timed_out(self, timeout: float | None) -> HostError:
        return HostError(f"{self.args[0]} did not finish within {timeout:.0f} s", "it was stopped")

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _signalled(self) -> None:
        """Called by the signal policy (in the handler): forward now, kill after the grace."""
        assert self.forward is not None
        self.signal_group(self.forward)
        timer = threading.Timer(self.grace, self.signal_group, (signal.SIGKILL,))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def stop(self) -> None:
        """End whatever is left of the group, leader first reaped or not: SIGTERM, then
        SIGKILL, reaping the orphans that were re-parented to us (see adopt_orphans)."""
        if self.popen is None:
            return
        if self._timers:  # it was sent its stop signal: let it unwind, as long as the grace
            try:
                self.popen.wait(self.grace)
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self._group_alive():
                return
            self.signal_group(sig)
            deadline = time.monotonic() + self.grace
            while time.monotonic() < deadline and self._group_alive():
                time.sleep(POLL_SECONDS)

    def _group_alive(self) -> bool:
        """Whether any process of the group is left, after reaping those that are ours (the
        leader through Popen, so its exit status is kept; then orphans re-parented to us)."""
        assert self.popen is not None
        while self.popen.poll() is not None:
            try:
                pid, _ = os.waitpid(-self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def run(args: Sequence[str], *, input: bytes | str | None = None,
        text: bool = False, timeout: float | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None, stdout: Any = PIPE,
        forward: int | None = signal.SIGTERM) -> Completed:
    """Run a program to its end, capturing stderr and (unless ``stdout`` says where it goes)
    stdout; the caller judges the exit status.

    Missing program or timeout: a HostError.  A signal stops it (the policy above) unless
    ``forward`` is None.
    """
    with Process(args, stdin=PIPE if input is not None else DEVNULL, stdout=stdout, stderr=PIPE,
                 env=env, cwd=cwd, forward=forward) as process:
        out, err = process.communicate(input.encode() if isinstance(input, str) else input, timeout)
        returncode = process.wait()
    if text:
        out, err = out.decode(errors="replace") if out is not None else None, err.decode(errors="replace")
    return Completed(process.args, returncode, out, err)


def probe(args: Sequence[str], timeout: float = 10.0) -> str:
    """What a program printed on stdout, or "" when it is missing, fails to start or hangs:
    for questions like "which version?" whose answer may be "none"."""
    try:
        return run(args, text=True, timeout=timeout).stdout
    except HostError:
        return ""


def last_line(result: Completed) -> str:
    """The last non-empty line a program wrote to stderr: usually why it failed."""
    stderr = result.stderr if isinstance(result.stderr, str) else \
        (result.stderr or b"").decode(errors="replace")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def replace_process(args: Sequence[str]) -> None:
    """Become the program (``tdx-image run --exec``): its terminal, its exit status."""
    require(args[0])
    os.execvp(args[0], list(args))
