"""ruff (the repository), mypy (the package) and shellcheck (every tracked shell script and the
config.sh each description is composed into) report nothing; their settings are in
pyproject.toml, and a shellcheck directive in a script says why it is there."""

import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.build.compose import compose
from imagebuilder.distros.targets import TARGETS
from imagebuilder.core.paths import SHARED_OVERLAY

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: object, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True, text=True)


def shell_scripts() -> list[Path]:
    """Tracked files that are shell: a .sh name or a shebang naming sh or bash."""
    tracked = run("git", "ls-files", "-z").stdout.split("\0")
    scripts = []
    for name in filter(None, tracked):
        path = ROOT / name
        if not path.is_file():
            continue
        with open(path, "rb") as file:
            first = file.readline(100)
        if name.endswith(".sh") or first.startswith((b"#!/bin/sh", b"#!/bin/bash",
                                                      b"#!/usr/bin/env bash")):
            scripts.append(path)
    return scripts


def test_ruff_is_clean():
    result = run(BIN / "ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean():
    result = run(BIN / "mypy")  # files and settings: [tool.mypy] in pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_shell_script_is_found():
    found = {str(path.relative_to(ROOT)) for path in shell_scripts()}
    assert found >= {
        "setup.sh", "run-tests", ".ci/run", "imagebuilder/build/hostshim/esp-shim",
        "imagebuilder/build/container-provision.sh", "containers/make-debian-12-image",
        "kiwi_descriptions/debian/config.sh", "kiwi_descriptions/debian/post_bootstrap.sh",
        "kiwi_descriptions/suse/config.sh", "overlays/tdx/config.sh",
        "overlays/tdx/root/usr/lib/tdx-image/tdx-selfcheck",  # POSIX sh, run in the guest
    }, found
    assert not any(name.endswith(".py") for name in found)


def test_shell_scripts_pass_shellcheck():
    result = run(BIN / "shellcheck", *shell_scripts())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted({t.description for t in TARGETS.values()}))
def test_composed_config_sh_passes_shellcheck(tmp_path, name):
    description = next(t for t in TARGETS.values() if t.description == name).description_dir
    composition = compose(description, SHARED_OVERLAY, tmp_path / "d")
    result = run(BIN / "shellcheck", composition.path / "config.sh")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("linter, source, finding", [
    ("shellcheck", "#!/bin/sh\nrm -rf $1/\n", "SC2086"),
    ("ruff", "import os\n", "F401"),
    ("mypy", "def size() -> int:\n    return None\n", "return-value"),
], ids=["shellcheck", "ruff", "mypy"])
def test_linters_report_what_they_are_there_for(tmp_path, linter, source, finding):
    """The tests above cannot pass by running a linter that checks nothing."""
    path = tmp_path / ("careless.sh" if linter == "shellcheck" else "careless.py")
    path.write_text(source)
    args = {"ruff": ["check", "--no-cache", path],
            "mypy": ["--cache-dir", ROOT / ".mypy_cache", path]}.get(linter, [path])
    result = run(BIN / linter, *args, cwd=tmp_path)
    assert result.returncode != 0 and finding in result.stdout, result.stdout + result.stderr
