"""Bad input with the real command line, as root (interrupts: test_00_safety.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.build import cleanup
from tests.conftest import TDX_IMAGE, error_line, run_cli

pytestmark = pytest.mark.integration


def assert_one_line_error(result, exit_code: int, fragment: str):
    assert result.returncode == exit_code, result.stderr
    assert fragment in error_line(result), result.stderr


def test_not_root(tmp_path):
    out = tmp_path / "debian"
    reachable = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                sys.executable, "-c", "import click, imagebuilder"],
                               cwd=Path(__file__).parents[2], capture_output=True)
    if reachable.returncode != 0:
        pytest.skip("the checkout is not readable by the unprivileged user 'nobody'")
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *TDX_IMAGE, "build",
         "debian", "--out", str(out)], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert_one_line_error(result, 3, "needs root")
    assert not out.exists()


def test_unreachable_repository(tmp_path):
    out = tmp_path / "debian"
    result = run_cli("build", "debian", "--mirror", "http://127.0.0.1:9/debian", "--out", out)
    assert_one_line_error(result, 4, "repository bookworm is unreachable")
    assert "--mirror" in result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_sles_on_this_host_refuses_before_credentials(tmp_path):
    # A Debian host cannot build SUSE targets at all (rpm database format), so that is said
    # first, whatever the credentials; refused credentials are tested against the loopback
    # server in tests/test_repos.py.
    env = dict(os.environ, TDX_IMAGE_REPO_USER="SCC_wrong", TDX_IMAGE_REPO_PASSWORD="not-it")
    result = run_cli("build", "sles", "--mirror", "http://127.0.0.1:9/auth", "--out", tmp_path / "s",
                     env=env)
    assert_one_line_error(result, 3, "rpm")
    assert "--container" in result.stderr
    assert "not-it" not in result.stderr
    assert not (tmp_path / "s").exists()


def test_missing_host_tool_names_the_package(tmp_path):
    # sgdisk and mkfs.* live in /usr/sbin: a PATH without it is a host without gdisk/dosfstools.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    result = run_cli("build", "debian", "--out", tmp_path / "d", env=env)
    assert_one_line_error(result, 3, "host tools missing")
    assert "apt-get install" in result.stderr and "gdisk" in result.stderr


def test_too_little_disk(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    fs = tmp_path / "small.ext4"
    subprocess.run(["truncate", "-s", "64M", fs], check=True)
    subprocess.run(["mkfs.ext4", "-q", fs], check=True)
    subprocess.run(["mount", "-o", "loop", fs, small], check=True)
    try:
        result = run_cli("build", "debian", "--out", small / "debian")
        assert_one_line_error(result, 3, "GiB free")
        assert list(small.iterdir()) == [small / "lost+found"]
    finally:
        subprocess.run(["umount", small], check=True)
    assert cleanup.leftovers(tmp_path) == ([], [])
