"""The one signal policy of every verb: SIGINT, SIGTERM and SIGHUP stop the work, children are
stopped and reaped, and the cleanup on the way out runs to its end.

- The first signal raises ``Interrupt`` (a KeyboardInterrupt) in the main thread, so every
  ``finally`` and context manager on the way out runs; the programs running meanwhile get their
  stop signal at once (``on_signal``: runner.Process registers them, and stops them).
- Inside ``deferred()`` (cleanup that must finish, or a child that must unwind first) the signal
  is only recorded; it is raised when the outermost deferred block ends.
- Every later signal is recorded and nothing else: a second Ctrl-C cannot cut short the cleanup
  the first one started.

The CLI installs the policy around every verb (``handled``); library entry points that start
children (the KIWI run, the boot test) install it too when called on their own.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from ..core.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    callbacks: list = []  # what runner.Process registered: called on the first signal


def _handler(signum, _frame):
    _State.received.append(signum)
    if len(_State.received) > 1:
        return  # the first signal's cleanup is under way; nothing may cut it short
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
    _State.received, _State.pending, _State.deferred, _State.callbacks = [], False, 0, []
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
    must only send signals or start timers); at once if that signal has already arrived while
    the policy is installed."""
    _State.callbacks.append(callback)
    if _State.installed and _State.received:
        callback()
    try:
        yield
    finally:
        _State.callbacks.remove(callback)
