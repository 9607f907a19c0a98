"""--container: the engine command a build runs, and its refusals.  The real run through
podman with a locally made Debian 12 image is tests/integration/test_container.py."""

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from imagebuilder.build import container
from imagebuilder.host import locks, requirements, runner, signals
from imagebuilder.build.pipeline import BuildRequest
from imagebuilder.build.compose import Customisation
from imagebuilder.core.errors import Interrupted
from imagebuilder.distros.repos import parse_repo_option
from imagebuilder.distros.targets import get_target
from imagebuilder.core.paths import DESCRIPTIONS_DIR, OVERLAYS_DIR, PROJECT_ROOT
from tests.conftest import FakeHost, run_cli


def test_the_build_runs_inside_with_the_project_out_and_cache_mounted(tmp_path, monkeypatch):
    monkeypatch.setenv("TDX_IMAGE_REPO_PASSWORD", "hunter2")
    monkeypatch.setenv("TDX_IMAGE_REPO_USER", "u")
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAA test\n")
    request = BuildRequest(target=get_target("leap", "15.6"), out_dir=tmp_path / "out" / "leap",
                           mirror="https://mirror.example/opensuse", ltss=False,
                           custom=Customisation(packages=("jq", "vim"), size_mib=6144,
                                                image_format="vmdk", ssh_key=key, ssh_user="admin"),
                           extra_repositories=[parse_repo_option("http://r.example/x,bookworm,main contrib")],
                           cache_dir=tmp_path / "cache", supplier="Builders <b@example.org>",
                           builder_id="https://ci.example.org/run/7")
    command = container.engine_command("/usr/bin/podman", "builder:tag", request, as_json=True)
    engine_part, inner = command[:command.index("builder:tag")], command[command.index("builder:tag") + 1:]
    volumes = [engine_part[i + 1] for i, word in enumerate(engine_part) if word == "--volume"]
    assert "--privileged" in engine_part and "/dev:/dev" in volumes
    # The driver and, beside it in a checkout, the descriptions and overlays; not the checkout.
    for source in (PROJECT_ROOT / "imagebuilder", DESCRIPTIONS_DIR, OVERLAYS_DIR):
        assert f"{source}:{source}:ro" in volumes
    assert f"{PROJECT_ROOT}:{PROJECT_ROOT}:ro" not in volumes
    assert f"{tmp_path / 'out'}:{tmp_path / 'out'}" in volumes
    # One package-cache lock for builds inside and outside containers (locks.LOCK_DIR).
    assert f"{locks.LOCK_DIR}:{locks.LOCK_DIR}" in volumes
    assert f"{tmp_path / 'cache'}:{tmp_path / 'cache'}" in volumes
    assert f"{key}:{key}:ro" in volumes
    assert inner[:5] == [container.VENV_PYTHON, "-m", "imagebuilder", "build", "leap"]
    assert inner[inner.index("--release") + 1] == "15.6"
    assert "--ltss" not in inner
    ltss = BuildRequest(target=get_target("sles", "15-SP6"), out_dir=tmp_path / "s", ltss=True,
                        mirror="https://rmt.example/repo")
    assert "--ltss" in container.engine_command("podman", "builder:tag", ltss, as_json=False)
    assert inner[inner.index("--out") + 1] == str(tmp_path / "out" / "leap")
    # The mirror and repositories (a URL may carry a login) go by name through the environment.
    assert "--mirror" not in inner and "--repo" not in inner
    assert {"TDX_IMAGE_MIRROR", "TDX_IMAGE_REPOS"} <= set(engine_part)
    assert container.engine_environment(request) == {
        "TDX_IMAGE_MIRROR": "https://mirror.example/opensuse",
        "TDX_IMAGE_REPOS": "http://r.example/x,bookworm,main contrib"}
    # Who supplies the image and which builder made it are the outer build's.
    assert inner[inner.index("--supplier") + 1] == "Builders <b@example.org>"
    assert inner[inner.index("--builder-id") + 1] == "https://ci.example.org/run/7"
    # The customisation goes in as the same options (settings.SETTINGS), paths absolute.
    assert " ".join(inner[inner.index("--package"):inner.index("--ssh-user") + 2]) == (
        f"--package jq --package vim --size 6144M --format vmdk --ssh-key {key} --ssh-user admin")
    assert "--json" in inner and "--progress" not in inner
    with_events = container.engine_command("podman", "builder:tag", request, True, progress_format="json")
    assert with_events[-2:] == ["--progress", "json"]  # the build inside emits the events
    # Secrets travel by name through the environment, never on the command line.
    assert "TDX_IMAGE_REPO_PASSWORD" in command and not any("hunter2" in word for word in command)


def test_a_zypper_target_sees_the_hosts_zypper_configuration_read_only(tmp_path):
    request = BuildRequest(target=get_target("sles"), out_dir=tmp_path / "sles")
    command = container.engine_command("podman", "img", request, as_json=False)
    has_zypp = Path("/etc/zypp").is_dir()
    assert (f"/etc/zypp:{container.HOST_ZYPP_MOUNT}/etc/zypp:ro" in command) == has_zypp
    debian = container.engine_command("podman", "img", BuildRequest(target=get_target("debian"),
                                                                 out_dir=tmp_path / "d"), False)
    assert not any("/etc/zypp" in word for word in debian)


def test_builder_images_are_named_by_their_inputs():
    assert container.builder_tag("a:1") == container.builder_tag("a:1")
    assert container.builder_tag("a:1") != container.builder_tag("a:2")


def test_boot_test_is_not_run_in_the_container():
    result = run_cli("build", "leap", "--container", "--boot-test")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --boot-test is not run inside the container")


@pytest.mark.skipif(os.geteuid() != 0, reason="the engine check comes after the root check")
def test_a_missing_engine_is_named(tmp_path):
    result = run_cli("build", "debian", "--container", "--out", tmp_path / "d",
                     env=dict(os.environ, TDX_IMAGE_CONTAINER_ENGINE="no-such-engine"))
    assert result.returncode == 3
    # The hint is in the host's own words (Debian here: apt-get install podman runc).
    assert result.stderr == f"error: --container needs no-such-engine ({runner.install_hint('podman')})\n"
    assert "podman runc" in runner.install_hint("podman")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="--container needs root")
def test_a_signal_reaches_the_engine_as_sigint_and_its_exit_is_awaited(tmp_path, monkeypatch):
    """The build inside unwinds its mounts on the SIGINT podman forwards: we wait for it."""
    unwound = tmp_path / "unwound"
    engine = tmp_path / "engine"
    engine.write_text("#!/bin/bash\n"
                      '[ "$1" = run ] || exit 0  # image inspect: the builder image exists\n'
                      f"trap 'sleep 0.5; touch {unwound}; exit 130' INT\n"
                      "while true; do sleep 0.1; done\n")
    engine.chmod(0o755)
    monkeypatch.setenv(container.ENGINE_ENV, str(engine))
    request = BuildRequest(target=get_target("debian"), out_dir=tmp_path / "out" / "debian",
                           cache_dir=tmp_path / "cache")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with signals.handled(), pytest.raises(Interrupted, match="the build in the container was stopped"):
        container.build_in_container(request, None, False, FakeHost())
    assert unwound.exists()


def test_the_build_inside_reads_mirror_and_repositories_from_the_environment(tmp_path):
    """What engine_environment hands the inner build parses back to the same request: a login in
    a URL reaches the build without being on any command line."""
    repos = [parse_repo_option("https://u:pw@r.example/x,bookworm,main contrib"),
             parse_repo_option("https://r.example/rpm")]
    request = BuildRequest(target=get_target("debian"), out_dir=tmp_path / "d",
                           mirror="https://u:pw@mirror.example/debian", extra_repositories=repos)
    environment = container.engine_environment(request)
    command = container.engine_command("podman", "img", request, as_json=False)
    assert not any("pw@" in word for word in command)

    result = run_cli("summary", "debian", "--json", env={**os.environ, **environment})

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["settings"]["mirror"] == {"value": "https://u:***@mirror.example/debian",
                                             "from": "environment"}
    assert summary["settings"]["repo"]["value"] == ["https://u:***@r.example/x",
                                                    "https://r.example/rpm"]
    assert "pw" not in result.stdout


def provisioned_packages() -> dict[str, set[str]]:
    """The packages container-provision.sh installs into a builder, per package manager."""
    words = container.PROVISION.read_text().replace("\\\n", " ").split()
    found: dict[str, set[str]] = {}
    for manager in ("apt-get", "zypper"):
        start = next(i for i, word in enumerate(words) if word == manager
                     and "install" in words[i + 1:i + 3])
        end = next(i for i in range(start, len(words)) if words[i] in ("apt-get", "zypper", "python=python3")
                   and i > start)
        found[manager] = {word.strip('"') for word in words[start:end] if not word.startswith("-")}
    return found


def test_every_builder_gets_the_tools_a_build_and_its_uki_hook_run():
    """A SUSE build runs in a Leap container, a debian one in Debian's: KIWI's disk tools, the
    ESP fallback and what uki.sh runs on the build host (partitions, mounts, veritysetup) must be
    provisioned in both, by the packages runner.TOOLS names."""
    packages = provisioned_packages()
    tools = (requirements.DISK_TOOLS + requirements.ESP_FALLBACK_TOOLS + requirements.UKI_TOOLS
             + requirements.VERITY_TOOLS)
    missing = [(tool, manager) for tool in tools for manager, package in
               (("apt-get", runner.TOOLS[tool].debian), ("zypper", runner.TOOLS[tool].suse))
               if package not in packages[manager]]
    assert missing == []
