"""The installable package: a wheel built from the sources, installed into a fresh venv outside
the checkout, composes and checks a build (`build debian --dry-run`) and validates an image from
another directory, with no checkout in reach.

The venv borrows this venv's third-party packages (KIWI, click, rich, ...) through a .pth line
and finds kiwi-ng on PATH; tdx-image itself comes from the wheel.  Building the wheel fetches
setuptools from PyPI (pip's build isolation, as a user's `pip install .` does): integration tier.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from imagebuilder.core.paths import PROJECT_ROOT

from ..test_validate_checks import build_synthetic_image

pytestmark = pytest.mark.integration

SOURCES = ("pyproject.toml", "README.md", "imagebuilder", "kiwi_descriptions", "overlays")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ of a fresh venv holding the wheel built from a copy of the sources."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy: building writes build/ and *.egg-info beside pyproject.toml
    shutil.copytree(PROJECT_ROOT, source, ignore=lambda directory, names: [
        name for name in names if name == "__pycache__" or
        (Path(directory) == PROJECT_ROOT and name not in SOURCES)])
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", work / "dist",
                    source], check=True, capture_output=True)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = Path(subprocess.run([venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    wheel, = (work / "dist").glob("tdx_image-*.whl")
    subprocess.run([*pip, "--python", venv / "bin/python", "install", "--no-deps", wheel],
                   check=True, capture_output=True)
    return venv / "bin"


def run_installed(bin_dir: Path, cwd: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}:{Path(sys.executable).parent}:{env.get('PATH', '')}"  # kiwi-ng
    return subprocess.run([bin_dir / "tdx-image", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_wheel_carries_every_module_description_and_overlay_file(installed):
    """Every file of the package, the descriptions and the overlay, at its place in the wheel,
    and executables (the overlay's self-check, the ESP shim) still executable once installed."""
    wheel, = (installed.parent.parent / "dist").glob("tdx_image-*.whl")
    package, = installed.parent.glob("lib/python3*/site-packages/imagebuilder")
    sources = {f"imagebuilder/{path.relative_to(top if top.name == 'imagebuilder' else PROJECT_ROOT)}": path
               for top in (PROJECT_ROOT / name for name in ("imagebuilder", "kiwi_descriptions", "overlays"))
               for path in top.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    assert set(sources) - set(zipfile.ZipFile(wheel).namelist()) == set()
    for name, source in sources.items():
        assert os.access(package.parent / name, os.X_OK) == os.access(source, os.X_OK), name


def test_installed_wheel_dry_runs_a_build_from_another_directory(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_installed(installed, elsewhere, "build", "debian", "--dry-run", "--json",
                           "--mirror", "http://deb.example/debian", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["target"] == "debian" and plan["out"] == str(tmp_path / "out")
    # KIWI checked the description composed from the wheel's copy, not the checkout's.
    assert not os.path.lexists(tmp_path / "out")
    site = Path(subprocess.run([installed / "python", "-c", "import imagebuilder; print(imagebuilder.__file__)"],
                               check=True, capture_output=True, text=True, cwd=elsewhere).stdout).parent
    assert (site / "kiwi_descriptions" / "debian" / "config.xml").is_file()
    assert not site.is_relative_to(PROJECT_ROOT)


def test_installed_wheel_validates_an_image_from_another_directory(installed, tmp_path):
    image = build_synthetic_image(tmp_path)
    result = run_installed(installed, tmp_path, "validate", image)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_wheel_refuses_an_out_inside_its_package(installed, tmp_path):
    package, = installed.parent.glob("lib/python3*/site-packages/imagebuilder")
    result = run_installed(installed, tmp_path, "build", "debian", "--dry-run", "--mirror",
                           "http://deb.example/debian", "--out", package / "overlays" / "o", "--force")
    assert result.returncode == 2 and "lies inside this project's" in result.stderr, result.stderr
