"""--container for real: the debian target built by `tdx-image build debian --container`
inside a Debian 12 container image made on this host (containers/make-debian-12-image:
mmdebstrap from the host's apt sources, then `podman import`; no registry is reachable here).
It is the path Leap and SLES take in their own images on hosts that are not SUSE 15.
"""

import json
import os
import shutil
import subprocess

import pytest

from imagebuilder.build import cleanup
from imagebuilder.distros.targets import DEBIAN_BUILDER_IMAGE
from imagebuilder.core.paths import PROJECT_ROOT
from tests.conftest import error_line, run_cli

pytestmark = pytest.mark.integration

MAKE_IMAGE = PROJECT_ROOT / "containers" / "make-debian-12-image"
# This host's podman needs runc and no default ulimits (docs: containers/containers.conf).
ENV = dict(os.environ, CONTAINERS_CONF=str(PROJECT_ROOT / "containers" / "containers.conf"))


@pytest.fixture(scope="module")
def debian_container_image() -> str:
    if not shutil.which("podman"):
        pytest.fail("podman is not installed: ./setup.sh installs it")
    made = subprocess.run([MAKE_IMAGE], capture_output=True, text=True, env=ENV)
    assert made.returncode == 0, made.stderr[-3000:]
    return DEBIAN_BUILDER_IMAGE


def test_debian_builds_in_its_container_and_publishes_on_the_host(debian_container_image, tmp_path):
    out = tmp_path / "debian"
    result = run_cli("build", "debian", "--container", "--out", out, "--json", "--progress", "json",
                     env=ENV)
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads(result.stdout)  # the build inside printed it; --json passed through
    # --progress json passed through too: the phases inside arrive as JSON lines on stderr.
    events = [json.loads(line) for line in result.stderr.splitlines()]  # nothing but events
    finished = {event["phase"] for event in events if event["status"] == "finished"}
    assert {"compose", "kiwi", "validate", "measure"} <= finished, result.stderr[-4000:]
    published = json.loads((out / "build.json").read_text())
    assert record == published and published["target"]["release"] == "12"
    image = out / published["image"]
    assert image.is_file() and published["validation"]["ok"]
    digest = (out / f"{image.name}.sha256").read_text().split()[0]
    assert digest == published["artifacts"][image.name]["sha256"]
    # Built inside the container: KIWI there is the venv's, not this host's.
    assert published["kiwi_command"][0] == "/opt/tdx-image/bin/kiwi-ng"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debian"]  # no staging, no .failed
    assert cleanup.leftovers(tmp_path) == ([], [])


def test_the_image_maker_reuses_an_existing_image(debian_container_image):
    again = subprocess.run([MAKE_IMAGE], capture_output=True, text=True, env=ENV)
    assert again.returncode == 0 and "exists; reusing it" in again.stdout


def test_a_failing_build_inside_keeps_its_exit_code(debian_container_image, tmp_path):
    # The build inside refuses an unreachable mirror with its own code (4), as natively.
    result = run_cli("build", "debian", "--container", "--out", tmp_path / "d",
                     "--mirror", "http://127.0.0.1:9/debian", env=ENV)
    assert result.returncode == 4, result.stderr[-2000:]
    assert "error: repository bookworm is unreachable" in result.stderr
    assert not (tmp_path / "d").exists()


def test_an_image_that_cannot_be_pulled_is_named(tmp_path):
    result = run_cli("build", "leap", "--container", "--out", tmp_path / "leap",
                     "--container-image", "localhost/tdx-image-no-such-image:1", env=ENV)
    assert result.returncode == 4, result.stderr
    assert error_line(result).startswith(
        "error: cannot get the container image localhost/tdx-image-no-such-image:1")
    assert list(tmp_path.iterdir()) == []
