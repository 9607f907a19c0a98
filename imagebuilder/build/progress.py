"""Phase events: what a build reports as it goes, and the consumers of those reports.

A build runs in phases (``check repositories``, ``compose``, ``kiwi``, ``publish``, ...); a phase
may run steps one after the other (KIWI's own phases within ``kiwi``: the next step ends the one
before, the end of the phase ends the last).  ``Phases.phase(name)`` times a phase and emits
``started`` and then ``finished`` or, when anything ends it early (an error, a signal), ``failed``
for the running step and the phase.  Consumers: the console display (cli.py), build.json's
``durations_s`` (``Durations``) and ``build --progress=json`` (``JsonLines``).

Events carry phase names from fixed tables, durations and the driver's own notes; never command
output, paths to credentials or credentials themselves.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TextIO

STARTED, FINISHED, FAILED, NOTE = "started", "finished", "failed", "note"


@dataclass(frozen=True)
class PhaseEvent:
    status: str  # STARTED, FINISHED, FAILED or NOTE
    phase: str | None  # the phase or step it is about (a note: the running phase, if any)
    within: str | None = None  # the phase a step or nested phase runs in
    duration_s: float | None = None  # with FINISHED and FAILED
    message: str | None = None  # what the phase is doing in words, or the note
    time: float = field(default_factory=time.time)  # seconds since the epoch

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


Listener = Callable[[PhaseEvent], None]


@dataclass
class _Running:
    name: str
    started: float
    step: tuple[str, float] | None = None


class Phases:
    """Times phases and steps and tells every listener, in order.  Steps may come from another
    thread (KIWI's output is followed in one), so events are emitted under a lock."""

    def __init__(self, *listeners: Listener):
        self.listeners = listeners
        self.running: list[_Running] = []
        self.lock = threading.RLock()  # re-entered when a signal interrupts an emit

    def emit(self, event: PhaseEvent) -> None:
        with self.lock:
            for listener in self.listeners:
                listener(event)

    def note(self, message: str) -> None:
        with self.lock:
            self.emit(PhaseEvent(NOTE, self.running[-1].name if self.running else None, message=message))

    @contextmanager
    def phase(self, name: str, message: str | None = None) -> Iterator[None]:
        with self.lock:
            within = self.running[-1].name if self.running else None
            running = _Running(name, time.monotonic())
            self.running.append(running)
            self.emit(PhaseEvent(STARTED, name, within, message=message))
        try:
            yield
        except BaseException:
            self._end(running, within, FAILED)
            raise
        self._end(running, within, FINISHED)

    def step(self, name: str | None) -> None:
        """Within the running phase, end the running step and start ``name`` (None: none)."""
        with self.lock:
            running = self.running[-1]
            self._end_step(running, FINISHED)
            if name is not None:
                running.step = (name, time.monotonic())
                self.emit(PhaseEvent(STARTED, name, running.name))

    def _end(self, running: _Running, within: str | None, status: str) -> None:
        with self.lock:
            self._end_step(running, status)
            self.running.remove(running)
            self.emit(PhaseEvent(status, running.name, within, _since(running.started)))

    def _end_step(self, running: _Running, status: str) -> None:
        if running.step:
            name, started = running.step
            running.step = None
            self.emit(PhaseEvent(status, name, running.name, _since(started)))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


class Durations:
    """build.json's ``durations_s``: each finished phase by its name (``boot test`` as
    ``boot_test``), the steps of every phase under ``kiwi_phases``, and the total so far."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.phases: dict[str, float] = {}
        self.steps: dict[str, float] = {}

    def __call__(self, event: PhaseEvent) -> None:
        if event.status != FINISHED or event.phase is None or event.duration_s is None:
            return
        if event.within is None:
            self.phases[event.phase.replace(" ", "_")] = event.duration_s
        else:
            self.steps[event.phase] = event.duration_s

    def record(self) -> dict:
        return {**self.phases, "total": _since(self.started), "kiwi_phases": dict(self.steps)}


class JsonLines:
    """``--progress=json``: each event as one JSON object on its own line (like osbuild's
    JSONSeqMonitor, without the record separator), flushed at once."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def __call__(self, event: PhaseEvent) -> None:
        self.stream.write(json.dumps(event.to_dict(), sort_keys=True) + "\n")
        self.stream.flush()
