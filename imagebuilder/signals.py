"""The one signal policy of every verb: SIGINT, SIGTERM and SIGHUP stop the work, children are
stopped and reaped, and the cleanup on the way out runs to its end.

- The first signal raises ``Interrupt`` (a KeyboardInterrupt) in the main thread, so every
  ``finally`` and context manager on the way out runs; process groups registered with
  ``forward_to`` get their stop signal at once.
- Inside ``deferred()`` (cleanup that must finish, or a child that must unwind first) the signal
  is only recorded; it is raised when the outermost deferred block ends.
- Every later signal is recorded and nothing else: a second Ctrl-C cannot cut short the cleanup
  the first one started.

The CLI installs the policy around every verb (``handled``); library entry points that start
children (the KIWI run, the boot test) install it too when called on their own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager

from .errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
GROUP_STOP_SECONDS = 5.0


class Interrupt(KeyboardInterrupt):
    """Raised in the main thread by the first SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    installed = 0
    deferred = 0
    pending = False  # a signal arrived inside deferred() and is still to be raised
    received: list[int] = []
    groups: dict[int, tuple[int, float]] = {}  # process group -> (stop signal, grace)
    callbacks: list = []  # what runner.Process registered: called on the first signal
    timers: list[threading.Timer] = []


def _handler(signum, _frame):
    _State.received.append(signum)
    if len(_State.received) > 1:
        return  # the first signal's cleanup is under way; nothing may cut it short
    for group, (stop, grace) in list(_State.groups.items()):
        _stop(group, stop, grace)
    for callback in list(_State.callbacks):
        callback()
    if _State.deferred:
        _State.pending = True
    else:
        raise Interrupt(signum)


def received() -> int | None:
    """The first signal received since the policy was installed, or None."""
    return _State.received[0] if _State.received else None


def received_name() -> str:
    """The name of the signal that stopped the work (SIGINT: Python's own Ctrl-C handler)."""
    first = received()
    return signal.Signals(first).name if first else "SIGINT"


@contextmanager
def handled():
    """Install the policy (once: nested uses, and threads other than the main one, are no-ops)."""
    if _State.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.received, _State.pending, _State.deferred, _State.groups, _State.timers = \
        [], False, 0, {}, []
    _State.callbacks = []
    previous = {sig: signal.signal(sig, _handler) for sig in HANDLED}
    _State.installed = 1
    try:
        yield
    finally:
        _State.installed = 0
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def deferred():
    """A block no signal interrupts; a signal that arrived meanwhile is raised as it ends."""
    _State.deferred += 1
    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        _State.pending = False  # already on its way out
        raise
    finally:
        _State.deferred -= 1
        if not _State.deferred and _State.pending:
            _State.pending = False
            raise Interrupt(_State.received[0])


@contextmanager
def on_signal(callback):
    """While the block runs, the first signal calls ``callback()`` (in the signal handler: it
    must only send signals or start timers); at once if that signal has already arrived."""
    _State.callbacks.append(callback)
    if _State.received:
        callback()
    try:
        yield
    finally:
        _State.callbacks.remove(callback)


@contextmanager
def forward_to(process: subprocess.Popen, stop: int, grace: float):
    """While the block runs, a signal sends ``stop`` to ``process``'s group (started in a new
    session) and, if it is still there ``grace`` seconds later, SIGKILL."""
    _State.groups[process.pid] = (stop, grace)
    if _State.received:  # arrived between the start of the process and this registration
        _stop(process.pid, stop, grace)
    try:
        yield
    finally:
        _State.groups.pop(process.pid, None)
        for timer in _State.timers:
            timer.cancel()


def _stop(group: int, stop: int, grace: float) -> None:
    kill_group(group, stop)
    timer = threading.Timer(grace, kill_group, (group, signal.SIGKILL))
    timer.daemon = True
    timer.start()
    _State.timers.append(timer)


def kill_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def adopt_orphans() -> None:
    """Become the reaper of orphaned descendants, so stop_group can wait for them."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def stop_group(group: int) -> None:
    """End what is left of a process group whose leader exited (KIWI's apt-get, dpkg,
    postinst scripts): SIGTERM, then SIGKILL, and reap those that were re-parented to us."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        kill_group(group, sig)
        deadline = time.monotonic() + GROUP_STOP_SECONDS
        while time.monotonic() < deadline:
            _reap(group)
            if not _group_alive(group):
                return
            time.sleep(0.1)


def _reap(group: int) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-group, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
