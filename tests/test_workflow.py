"""The GitHub Actions workflow passes actionlint and zizmor with no finding, and the two
linters do catch what they are there for."""

import subprocess
import sys
from pathlib import Path

import pytest

WORKFLOW = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "images.yml"
BIN = Path(sys.executable).parent


def actionlint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "actionlint", "-no-color", str(path)], capture_output=True, text=True)


def zizmor(path: Path) -> subprocess.CompletedProcess:
    # Offline: no GitHub API here; pedantic: every audit, not only the high-confidence ones.
    return subprocess.run([BIN / "zizmor", "--offline", "--persona", "pedantic", "--no-progress",
                           str(path)], capture_output=True, text=True)


def test_workflow_passes_actionlint():
    result = actionlint(WORKFLOW)
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def test_workflow_passes_zizmor():
    result = zizmor(WORKFLOW)
    assert result.returncode == 0 and "No findings to report" in result.stdout, result.stdout


@pytest.fixture
def careless_workflow(tmp_path) -> Path:
    """The workflow with an unpinned action, a template injection and a bad expression."""
    text = WORKFLOW.read_text()
    text = text.replace("actions/checkout@d23441a48e516b6c34aea4fa41551a30e30af803 # v6.1.0",
                        "actions/checkout@v6", 1)
    text = text.replace('run: sudo ./setup.sh --no-build',
                        'run: echo "${{ github.event.pull_request.title }}" ${{ matrix.nope }}', 1)
    path = tmp_path / "images.yml"
    path.write_text(text)
    return path


def test_the_linters_catch_a_careless_workflow(careless_workflow):
    lint = actionlint(careless_workflow)
    assert lint.returncode == 1 and "matrix" in lint.stdout
    audit = zizmor(careless_workflow)
    assert audit.returncode != 0
    assert "unpinned-uses" in audit.stdout and "template-injection" in audit.stdout
