"""The outcome of one validation: per-check results, the verdict, and its renderings."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from ..core.console import Console

from ..core.results import SKIP, Result, render
from ..schemas import SCHEMA_VERSION


def check_record(check: Result) -> dict:
    """A check as validation.json has it: its hint is the check's reason, its detail the evidence."""
    return {"id": check.id, "severity": check.severity, "status": check.status,
            "reason": check.hint, "evidence": check.detail}


@dataclass
class Report:
    image: str
    checks: list[Result]
    duration_s: float
    cloud: str = "qemu"  # the cloud (--cloud) the image was checked for

    @property
    def ok(self) -> bool:
        """Every fail-severity check passed; one that could not be evaluated does not count as passed."""
        return not self.failed

    @property
    def failed(self) -> list[Result]:
        return [check for check in self.checks if check.failed]

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "image": self.image, "cloud": self.cloud, "ok": self.ok,
                "checks": [check_record(check) for check in self.checks],
                "duration_s": round(self.duration_s, 3)}

    def render(self, console: Console) -> None:
        render(console, self.checks, title=f"tdx-image validate --cloud {self.cloud} {self.image}")
        verdict = "[green]ok[/]" if self.ok else f"[bold red]not ok[/]: {len(self.failed)} check(s) failed"
        console.print(f"{verdict} ({self.duration_s:.1f} s)")

    def write_junit(self, path: Path) -> None:
        """One testcase per check; failed and skipped fail-severity checks count as failures."""
        suite = ElementTree.Element("testsuite", name="tdx-image validate", tests=str(len(self.checks)),
                                    failures=str(len(self.failed)), errors="0",
                                    skipped=str(sum(check.status == SKIP for check in self.checks)),
                                    time=f"{self.duration_s:.3f}")
        properties = ElementTree.SubElement(suite, "properties")
        ElementTree.SubElement(properties, "property", name="image", value=self.image)
        ElementTree.SubElement(properties, "property", name="cloud", value=self.cloud)
        for check in self.checks:
            case = ElementTree.SubElement(suite, "testcase", classname=f"validate.{check.id.split('.')[0]}",
                                          name=check.id, time="0")
            if check in self.failed:
                ElementTree.SubElement(case, "failure", message=check.detail, type=check.status).text = check.hint
            elif check.status == SKIP:
                ElementTree.SubElement(case, "skipped", message=check.detail)
            ElementTree.SubElement(case, "system-out").text = f"[{check.status}] {check.hint}\n{check.detail}"
        ElementTree.indent(suite)
        ElementTree.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
