"""The outcome of one validation: per-check results, the verdict, and its renderings."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..schemas import SCHEMA_VERSION

STATUS_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "info": "cyan", "skip": "magenta"}


@dataclass(frozen=True)
class CheckResult:
    id: str
    severity: str
    status: str  # pass | fail | warn | info | skip
    reason: str
    evidence: str


@dataclass
class Report:
    image: str
    checks: list[CheckResult]
    duration_s: float

    @property
    def ok(self) -> bool:
        """Every fail-severity check passed; one that could not be evaluated does not count as passed."""
        return all(check.status == "pass" for check in self.checks if check.severity == "fail")

    @property
    def failed(self) -> list[CheckResult]:
        return [check for check in self.checks if check.severity == "fail" and check.status != "pass"]

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "image": self.image, "ok": self.ok, "checks": [asdict(check) for check in self.checks],
                "duration_s": round(self.duration_s, 3)}

    def render(self, console: Console) -> None:
        table = Table(title=f"tdx-image validate {self.image}", show_lines=False)
        for column in ("check", "status", "evidence"):
            table.add_column(column, overflow="fold")
        for check in self.checks:
            style = STATUS_STYLE[check.status]
            table.add_row(check.id, f"[{style}]{check.status}[/{style}]", check.evidence)
        console.print(table)
        for check in self.failed:
            console.print(f"[bold red]{check.id}[/]: {check.reason}")
        verdict = "[green]ok[/]" if self.ok else f"[bold red]not ok[/]: {len(self.failed)} check(s) failed"
        console.print(f"{verdict} ({self.duration_s:.1f} s)")

    def write_junit(self, path: Path) -> None:
        """One testcase per check; failed and skipped fail-severity checks count as failures."""
        suite = ElementTree.Element("testsuite", name="tdx-image validate", tests=str(len(self.checks)),
                                    failures=str(len(self.failed)), errors="0",
                                    skipped=str(sum(check.status == "skip" for check in self.checks)),
                                    time=f"{self.duration_s:.3f}")
        ElementTree.SubElement(ElementTree.SubElement(suite, "properties"), "property", name="image", value=self.image)
        for check in self.checks:
            case = ElementTree.SubElement(suite, "testcase", classname=f"validate.{check.id.split('.')[0]}",
                                          name=check.id, time="0")
            if check in self.failed:
                ElementTree.SubElement(case, "failure", message=check.evidence, type=check.status).text = check.reason
            elif check.status == "skip":
                ElementTree.SubElement(case, "skipped", message=check.evidence)
            ElementTree.SubElement(case, "system-out").text = f"[{check.status}] {check.reason}\n{check.evidence}"
        ElementTree.indent(suite)
        ElementTree.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
