"""``tdx-image build TARGET --container``: the same build, run inside the target's own
container image (openSUSE Leap, SLE BCI, or a Debian 12 image made locally).

KIWI bootstraps an image with the build host's package manager, so a SUSE image wants a SUSE
host; a container of the target's distribution is one.  This module makes a builder image once
(the base image plus the host tools and KIWI; cached by a tag that names its inputs), then runs
``python -m imagebuilder build`` in it with the project mounted read-only, ``--out``'s parent
and the package cache mounted read-write at the same paths, and the privileges KIWI needs
(loop devices: ``--privileged`` and the host's ``/dev``).  The build inside publishes into
``--out`` exactly as a native build does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from . import kiwi, outdir, progress, settings
from ..host import locks, runner
from .pipeline import BuildRequest
from ..core.errors import HostError, InputError, Interrupted, RepositoryError, TdxImageError
from ..distros.repos import ZYPP_ROOT_ENV, Repository
from ..host import requirements
from ..host.facts import HostFacts
from ..core.paths import DESCRIPTIONS_DIR, OVERLAYS_DIR, PACKAGE_DIR

ENGINE_ENV = "TDX_IMAGE_CONTAINER_ENGINE"
ENGINES = ("podman", "docker")
PROVISION = Path(__file__).resolve().parent / "container-provision.sh"
VENV_PYTHON = "/opt/tdx-image/bin/python"
# The builders' Pythons (container-provision.sh): 3.11 is Debian 12's python3 and SUSE 15's
# python311; SUSE 16 ships 3.13 (python313, as KIWI's build-tests/x86/leap/
# test-image-aws-isolated-compute installs python313-cbor2).  Wheels are fetched for both.
CONTAINER_PYTHONS = ("3.11", "3.13")
GLIBC_MINOR = 31  # the oldest glibc among the builder images: Leap 15.5 / SLE 15 SP5, 2.31
HOST_ZYPP_MOUNT = "/run/tdx-image/host"  # the host's /etc/zypp appears below this
# Seconds the build inside gets to stop after SIGINT: KIWI's own grace and the engine's teardown.
STOP_GRACE = kiwi.STOP_GRACE + 30
RESTRICTED_HOST_HINT = ("on hosts with cgroups v1 or a fixed RLIMIT_NOFILE (Debian 12 here) "
                        "set CONTAINERS_CONF=containers/containers.conf (runc, no default ulimits)")


class ContainerBuildFailed(TdxImageError):
    """The build inside the container failed; its own error line was printed above."""

    def __init__(self, returncode: int):
        super().__init__(f"the build in the container failed (exit {returncode})",
                         "its error line is above")
        self.exit_code = returncode


def engine() -> str:
    wanted = os.environ.get(ENGINE_ENV)
    for name in ([wanted] if wanted else ENGINES):
        found = shutil.which(name)
        if found:
            return found
    raise HostError(f"--container needs {wanted or 'podman or docker'}", runner.install_hint("podman"))


def builder_requirements() -> list[str]:
    """The project's Python dependencies, as its installed metadata (pyproject.toml) states
    them; a checkout is installed editable (setup.sh), a wheel normally."""
    return [requirement for requirement in metadata.requires("tdx-image") or []
            if "extra ==" not in requirement]


def builder_tag(base_image: str) -> str:
    """Names every input of the builder image, so a changed input makes a new one."""
    digest = hashlib.sha256("\n".join([base_image, PROVISION.read_text(), *builder_requirements()])
                            .encode()).hexdigest()[:16]
    return f"localhost/tdx-image-builder:{digest}"


def image_exists(engine_path: str, image: str) -> bool:
    return runner.run([engine_path, "image", "inspect", image]).returncode == 0


def ensure_builder(engine_path: str, base_image: str, on_progress=print,
                   engine_output=runner.PIPE) -> str:
    """The builder image for ``base_image``: reused when it exists, made otherwise.  The
    engine's own build output goes to ``engine_output`` (by default kept for the error message)."""
    tag = builder_tag(base_image)
    if image_exists(engine_path, tag):
        return tag
    on_progress(f"making the builder image {tag} from {base_image} (once)")
    if not image_exists(engine_path, base_image):
        pulled = runner.run([engine_path, "pull", base_image])
        if pulled.returncode != 0:
            raise RepositoryError(f"cannot get the container image {base_image}: "
                                  f"{runner.last_line(pulled)}",
                                  "make its registry reachable or name a local image with "
                                  "--container-image; debian's is made by "
                                  "containers/make-debian-12-image")
    with tempfile.TemporaryDirectory(prefix="tdx-image-builder-") as context_dir:
        context = Path(context_dir)
        shutil.copy(PROVISION, context / "provision")
        (context / "requirements.txt").write_text("\n".join(builder_requirements()) + "\n")
        _fetch_wheels(context / "requirements.txt", context / "wheels")
        (context / "Containerfile").write_text(
            f"FROM {base_image}\n"
            "COPY . /tmp/tdx-image-builder/\n"
            "RUN sh /tmp/tdx-image-builder/provision && rm -rf /tmp/tdx-image-builder\n")
        result = runner.run([engine_path, "build", "--network", "host", "--tag", tag,
                             "--file", str(context / "Containerfile"), str(context)],
                            stdout=engine_output)
    if result.returncode != 0:
        raise HostError(f"making the builder image from {base_image} failed: "
                        f"{runner.last_line(result)}", RESTRICTED_HOST_HINT)
    return tag


def _fetch_wheels(requirements_file: Path, wheels: Path) -> None:
    """Wheels for the builder's Python, made by this host's pip, which already reaches PyPI
    (its proxies, CAs, indexes).  The top-level requirements are pure Python (KIWI comes as
    an sdist: built here); their dependencies are fetched for the container's CPython and the
    oldest glibc among the builder images, whatever Python this host runs."""
    pip = [sys.executable, "-m", "pip"]
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(17, GLIBC_MINOR + 1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "any"]
    commands = [[*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), "-r",
                 str(requirements_file)]]
    for version in CONTAINER_PYTHONS:
        commands.append(
            [*pip, "download", "--quiet", "--only-binary=:all:", "--python-version", version,
             "--implementation", "cp", "--abi", "cp" + version.replace(".", ""), "--abi", "abi3",
             "--abi", "none", *[f"--platform={platform}" for platform in platforms],
             "--find-links", str(wheels), "--dest", str(wheels), "-r", str(requirements_file)])
    for command in commands:
        result = runner.run(command)
        if result.returncode != 0:
            raise RepositoryError("pip could not fetch KIWI and the driver's dependencies for the "
                                  f"builder image: {runner.last_line(result)}",
                                  "check this host's access to PyPI")


def _driver_sources() -> list[Path]:
    """What the driver in the container reads, at the same paths: the package and, in a
    checkout, the descriptions and overlays beside it (a wheel has them inside the package).
    Never the whole site-packages: the container's venv has its own KIWI and libraries."""
    return [PACKAGE_DIR, *(d for d in (DESCRIPTIONS_DIR, OVERLAYS_DIR) if not d.is_relative_to(PACKAGE_DIR))]


def engine_command(engine_path: str, image: str, request: BuildRequest, as_json: bool,
                progress_format: str = "auto") -> list[str]:
    """The engine command running ``tdx-image build`` inside ``image`` for ``request``."""
    out_dir = request.out_dir.resolve()
    cache_dir = request.cache_dir.resolve()
    command = [engine_path, "run", "--rm", "--privileged", "--network", "host",
               "--volume", "/dev:/dev",
               *[word for source in _driver_sources() for word in ("--volume", f"{source}:{source}:ro")],
               "--volume", f"{out_dir.parent}:{out_dir.parent}",
               "--volume", f"{cache_dir}:{cache_dir}",
               # The host's build locks: the package cache is shared with builds outside (and
               # in other containers), so its lock must be too, or two apt-gets meet in it.
               "--volume", f"{locks.LOCK_DIR}:{locks.LOCK_DIR}",
               "--env", f"PYTHONPATH={PACKAGE_DIR.parent}", "--workdir", str(PACKAGE_DIR.parent)]
    inputs = [request.custom.ssh_key, request.credentials_file, *request.signing_keys]
    for path in (Path(p).resolve() for p in inputs if p):
        command += ["--volume", f"{path}:{path}:ro"]
    if request.target.package_manager == "zypper" and Path("/etc/zypp").is_dir():
        # A registered SLES host's repositories and credentials, read-only, beside the
        # container's own zypper configuration.
        command += ["--volume", f"/etc/zypp:{HOST_ZYPP_MOUNT}/etc/zypp:ro",
                    "--env", f"{ZYPP_ROOT_ENV}={HOST_ZYPP_MOUNT}"]
    # Values that may carry a login travel by name: the engine copies them from its own
    # environment (engine_environment), so they are never on a command line.
    carried = engine_environment(request)
    for name in ("TDX_IMAGE_REPO_USER", "TDX_IMAGE_REPO_PASSWORD", *carried):
        if name in carried or os.environ.get(name):
            command += ["--env", name]
    inner = [VENV_PYTHON, "-m", "imagebuilder", "build", request.target.name,
             "--release", request.target.chosen.name, "--out", str(out_dir),
             "--cache-dir", str(cache_dir)]
    if request.force:
        inner += ["--force"]
    if request.ltss:
        inner.append("--ltss")
    if request.credentials_file:
        inner += ["--credentials", str(Path(request.credentials_file).resolve())]
    for key in request.signing_keys:
        inner += ["--signing-key", str(Path(key).resolve())]
    if request.supplier:
        inner += ["--supplier", request.supplier]
    if request.builder_id:
        inner += ["--builder-id", request.builder_id]
    inner += settings.arguments(request.custom)
    if not request.incremental:
        inner.append("--no-incremental")
    if as_json:
        inner.append("--json")
    if progress_format != "auto":
        inner += ["--progress", progress_format]
    return command + [image] + inner


def engine_environment(request: BuildRequest) -> dict[str, str]:
    """The mirror and extra repositories for the build inside, as the environment variables its
    --mirror and --repo read (a URL may carry a login)."""
    environment = {}
    if request.mirror:
        environment["TDX_IMAGE_MIRROR"] = request.mirror
    if request.extra_repositories:
        environment["TDX_IMAGE_REPOS"] = "\n".join(map(_repo_option, request.extra_repositories))
    return environment


def build_in_container(request: BuildRequest, container_image: str | None, as_json: bool, host: HostFacts,
          progress_format: str = "auto") -> None:
    """Run the build in a container; its output and exit status are the build's.  With
    ``--progress json`` stderr carries only JSON lines: the builder image's making is a note
    event and the engine's build output is not shown."""
    if request.boot_test:
        raise InputError("--boot-test is not run inside the container",
                         "boot the published image on this host: tdx-image boot OUT/IMAGE.qcow2")
    outdir.check(request.out_dir, request.force, request.cache_dir)  # before any container work
    requirements.require("container", context=requirements.Context(host))
    engine_path = engine()
    base = container_image or request.target.chosen.container_image
    if progress_format == "json":
        events = progress.JsonLines(sys.stderr)
        image = ensure_builder(engine_path, base,
                               lambda text: events(progress.PhaseEvent(progress.NOTE, None, message=text)))
    else:
        image = ensure_builder(engine_path, base, lambda text: print(text, file=sys.stderr),
                               engine_output=sys.stderr)
    for directory in (request.out_dir.resolve().parent, request.cache_dir.resolve(), locks.LOCK_DIR):
        directory.mkdir(parents=True, exist_ok=True)  # the engine mounts only what exists
    try:
        # A signal reaches the engine as SIGINT; it forwards it to the build, which releases its
        # mounts: leaving the block waits for that, as long as the grace.
        with runner.Process(engine_command(engine_path, image, request, as_json, progress_format),
                            env={**runner.environment(), **engine_environment(request)},
                            forward=signal.SIGINT, grace=STOP_GRACE) as process:
            returncode = process.wait()
    except KeyboardInterrupt:
        raise Interrupted("the build in the container was stopped; nothing was published") from None
    if returncode in (125, 126, 127):
        raise HostError(f"{Path(engine_path).name} could not run the build container "
                        f"(exit {returncode})", RESTRICTED_HOST_HINT)
    if returncode != 0:
        raise ContainerBuildFailed(returncode)


def _repo_option(repo: Repository) -> str:
    """A ``--repo`` value that parses back to ``repo``."""
    if repo.type == "apt-deb":
        return f"{repo.url},{repo.distribution},{repo.components}"
    return repo.url
