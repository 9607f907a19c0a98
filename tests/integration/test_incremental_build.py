"""Incremental builds for real: a changed package list never reuses the session build's prepared
root (it prepares its own, unless one for exactly that list is cached already), and an
overlay-only change after it reuses the root it cached."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from imagebuilder.core.defaults import DEFAULT_CACHE_DIR
from imagebuilder.build.incremental import ROOTS_DIR
from tests.conftest import run_cli

pytestmark = pytest.mark.integration
PROJECT = Path(__file__).resolve().parents[2]


def _build(project: Path, out: Path) -> dict:
    result = run_cli("build", "debian", "--out", out, "--json", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "build.json").read_text())


def test_package_change_rebuilds_and_overlay_change_reuses(debian_build, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns(".venv", ".git", "out"))
    config = project / "kiwi_descriptions/debian/config.xml"
    config.write_text(config.read_text().replace('<package name="zstd"/>', '<package name="zstd"/>\n        <package name="less"/>'))

    roots = Path(os.environ.get("TDX_IMAGE_CACHE_DIR", DEFAULT_CACHE_DIR)) / ROOTS_DIR
    cached_before = {path.name for path in roots.iterdir()} if roots.is_dir() else set()
    more_packages = _build(project, tmp_path / "more-packages")
    # A fresh cache (CI) holds only the session's root: the build must prepare a new one.
    assert more_packages["incremental"] is (more_packages["prepared_root_key"] in cached_before), \
        more_packages["incremental_reason"]
    packages = (tmp_path / "more-packages" / "tdx-guest-debian-12.x86_64-12.0.0.packages").read_text()
    assert "\nless|" in "\n" + packages

    (project / "overlays/tdx/root/etc/tdx-image-test").write_text("overlay-only change\n")
    overlay_only = _build(project, tmp_path / "overlay-only")
    assert overlay_only["incremental"] is True, overlay_only["incremental_reason"]
    assert overlay_only["prepared_root_key"] == more_packages["prepared_root_key"]
    assert overlay_only["validation"]["ok"]
    assert (tmp_path / "overlay-only" / "tdx-guest-debian-12.x86_64-12.0.0.packages").read_text() == packages
    assert "/etc/tdx-image-test" in json.loads((tmp_path / "overlay-only" / "overlay-manifest.json").read_text())["files"]
