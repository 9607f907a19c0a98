"""What a check found, in one vocabulary for ``validate`` (the image) and ``doctor`` (the host).

A probe returns a ``Finding``; the caller makes it a ``Result`` with one of the status words,
and ``render`` shows results as one table, followed by what to do about those that did not pass.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

PASS, FAIL, WARN, INFO, SKIP = "pass", "fail", "warn", "info", "skip"
STATUS_STYLE = {PASS: "green", FAIL: "bold red", WARN: "yellow", INFO: "cyan", SKIP: "magenta"}


@dataclass(frozen=True)
class Finding:
    """What a probe saw: whether the check passed, and the evidence."""

    passed: bool
    detail: str
    warning: bool = False  # passed, but the way it passes is worth a warning (a fallback)


@dataclass(frozen=True)
class Result:
    id: str
    status: str  # pass | fail | warn | info | skip
    detail: str  # what was seen
    hint: str = ""  # why it matters (validate) or what to do (doctor)
    severity: str = FAIL  # what not passing counts as: fail, warn or info
    group: str = ""  # where it belongs when one table shows several kinds (doctor: build, tdx)

    @property
    def failed(self) -> bool:
        """Not passed, and it counts: a failure, or a fail-severity check that could not run."""
        return self.status == FAIL or (self.status == SKIP and self.severity == FAIL)


def status_of(finding: Finding, severity: str) -> str:
    if finding.passed:
        return WARN if finding.warning else PASS
    return severity


def render(console: Console, results: list[Result], title: str | None = None) -> None:
    """The results as a table (with a group column when they have groups), then the hint of
    each result that did not pass."""
    table = Table(title=title)
    grouped = any(result.group for result in results)
    for column in (["host"] if grouped else []) + ["check", "status", "detail"]:
        table.add_column(column, overflow="fold")
    for result in results:
        style = STATUS_STYLE[result.status]
        table.add_row(*([result.group] if grouped else []), result.id,
                      f"[{style}]{result.status}[/{style}]", result.detail)
    console.print(table)
    for result in results:
        if result.status in (FAIL, WARN, SKIP) and result.hint:
            style = STATUS_STYLE[FAIL if result.failed else WARN]
            console.print(f"[{style}]{result.id}[/]: {result.hint}")


def wide_console() -> Console:
    """A console wide enough for a table of long details, also when not on a terminal."""
    return Console(width=max(shutil.get_terminal_size().columns, 120))
