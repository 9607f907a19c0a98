"""The integration tier's cloud builds (issue 19): `build debian --cloud gcp` and `--cloud azure`,
each once per session.  Both are debian 13 with its defaults; they add cloud-init to the
packages the plain debian 13 build installs, so the second reuses the first's prepared root."""

import json
import os
from pathlib import Path

import pytest

from ..conftest import run_cli

# Developers iterating on the cloud tests may reuse published builds (as TDX_IMAGE_TEST_BUILD).
REUSE_BUILD_GCP = "TDX_IMAGE_TEST_BUILD_GCP"
REUSE_BUILD_AZURE = "TDX_IMAGE_TEST_BUILD_AZURE"


def cloud_build(tmp_path_factory, cloud: str, reuse: str) -> Path:
    """The published output of `tdx-image build debian --cloud CLOUD --boot-test`: the boot
    test boots the GCP image on an emulated NVMe controller and is refused, with its reason
    recorded, for Azure (VMBus)."""
    if os.environ.get(reuse):
        return Path(os.environ[reuse])
    out = tmp_path_factory.mktemp(f"build-{cloud}") / "debian"
    result = run_cli("build", "debian", "--cloud", cloud, "--boot-test", "--out", out, "--json")
    (out.parent / "build.stderr").write_text(result.stderr)
    assert result.returncode == 0, f"the debian --cloud {cloud} build failed:\n{result.stderr[-4000:]}"
    return out


@pytest.fixture(scope="session")
def debian_gcp_build(tmp_path_factory) -> Path:
    return cloud_build(tmp_path_factory, "gcp", REUSE_BUILD_GCP)


@pytest.fixture(scope="session")
def debian_azure_build(tmp_path_factory) -> Path:
    return cloud_build(tmp_path_factory, "azure", REUSE_BUILD_AZURE)


def published_image(build: Path) -> Path:
    return build / json.loads((build / "build.json").read_text())["image"]
