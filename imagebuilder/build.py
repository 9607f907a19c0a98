"""``tdx-image build``: the whole flow for one target, in order.

target -> repositories and host checks -> composed description -> KIWI run -> artifacts ->
validation (-> boot test) -> build record -> one rename into ``--out``.
All work happens in a staging directory beside ``--out``; on failure or interrupt it is
released (mounts, loop devices) and removed, and only the log and reports are kept, in
``<out>.failed/``.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import __version__, cleanup, hostcheck, incremental, kiwi, kiwicheck, publish, sbom
from .boot import boot_image
from .compose import MANIFEST_PATH, Customisation, compose
from .errors import CheckFailed, CredentialsError, HostError, InputError, RepositoryError
from .measure import predict
from .repos import Credentials, Repository, check_reachable, load_credentials
from .targets import SHARED_OVERLAY, Target
from .validate import validate_image

DEFAULT_CACHE_DIR = Path("/var/cache/tdx-image")


@dataclass
class BuildRequest:
    target: Target
    out_dir: Path
    mirror: str | None = None
    extra_repositories: list[Repository] = field(default_factory=list)
    credentials_file: Path | None = None
    signing_keys: list[Path] = field(default_factory=list)
    custom: Customisation = Customisation()
    cache_dir: Path = DEFAULT_CACHE_DIR
    boot_test: bool = False
    boot_timeout: float = 600.0
    incremental: bool = True  # reuse a cached prepared root when its key matches (incremental.py)

    @cached_property
    def repositories(self) -> list[Repository]:
        # Target repositories first: KIWI pairs credentials with the leading --add-repo values.
        return self.target.repositories(self.mirror) + self.extra_repositories

    def credentials(self) -> Credentials | None:
        """The user's (--credentials, environment), or those the host's repositories name."""
        given = load_credentials(str(self.credentials_file) if self.credentials_file else None)
        carried = {repo.credentials for repo in self.repositories if repo.credentials}
        if given and carried:
            raise InputError("repository credentials were given, but the host's repositories "
                             "name their own credentials files",
                             "credentials go with --mirror (an SMT that wants a login)")
        if len(carried) > 1:
            # KIWI takes one credentials file per build for the leading --add-repo values.
            raise CredentialsError("the host's repositories name different credentials files",
                                   "give an RMT/SMT with --mirror instead")
        return given or (carried.pop() if carried else None)

    def secrets(self, credentials: Credentials | None) -> list[str]:
        """What never reaches a log or a report: passwords and SCC's repository tokens."""
        return (credentials.secrets() if credentials else []) + [
            repo.token for repo in self.repositories if repo.token]


def kiwi_run(request: BuildRequest, staging: Path, credentials: Credentials | None,
             esp_fallback: bool) -> kiwi.KiwiRun:
    return kiwi.KiwiRun(
        kiwi=hostcheck.kiwi_command(),
        description=staging / "description",
        target_dir=staging / "kiwi",
        cache_dir=request.cache_dir,
        repositories=request.repositories,
        profile=request.target.profile,
        credentials_file=staging / "credentials" if credentials else None,
        signing_keys=request.signing_keys,
        esp_fallback_dir=staging / "esp-fallback" if esp_fallback else None,
    )


def compose_description(request: BuildRequest, destination: Path):
    """The target's description for the chosen release, plus the shared overlay."""
    composition = compose(request.target.description_dir, SHARED_OVERLAY, destination,
                          request.custom)
    request.target.apply_release(destination)
    return composition


def dry_run(request: BuildRequest) -> dict:
    """Compose the description (kept for inspection), let KIWI check it, return the command."""
    note = None
    try:
        request.repositories
    except RepositoryError as error:
        # sles off a registered host: check the description against an RMT's layout.
        if not request.target.check_mirror or request.mirror:
            raise
        note = f"{error.message}; checked with an RMT layout under {request.target.check_mirror}"
        request = dataclasses.replace(request, mirror=request.target.check_mirror)
    credentials = request.credentials()
    staging = Path(tempfile.mkdtemp(prefix=f"tdx-image-dry-run-{request.target.name}-"))
    compose_description(request, staging / "description")
    kiwicheck.check_description(staging / "description", request.target.profile, request.repositories)
    run = kiwi_run(request, staging, credentials, esp_fallback=not hostcheck.kernel_mounts_vfat())
    redact = kiwi.Redactor(request.secrets(credentials))
    return {"target": request.target.name, "release": request.target.chosen.name,
            "description": str(run.description), "command": [redact(word) for word in run.command()],
            "esp_fallback": run.esp_fallback_dir is not None, "note": note}


def build(request: BuildRequest, on_phase: Callable[[str], None]) -> dict:
    """Build, check and publish; return the build record (also written as build.json)."""
    started = time.monotonic()
    target = request.target
    out_dir = request.out_dir.resolve()
    # A host that cannot build this target at all says so first; then the user's inputs.
    hostcheck.require_build_host(target)
    hostcheck.require_root()
    ssh_key = request.custom.ssh_key
    if ssh_key and not ssh_key.is_file():
        raise InputError(f"--ssh-key {ssh_key}: no such file")
    credentials = request.credentials()
    on_phase("check repositories")
    check_reachable(request.repositories, credentials)
    hostcheck.require_kiwi()
    hostcheck.require_tools(hostcheck.DISK_TOOLS)
    hostcheck.require_tools(hostcheck.PACKAGE_MANAGER_TOOLS[target.package_manager])
    esp_fallback = not hostcheck.kernel_mounts_vfat()
    if esp_fallback:
        hostcheck.require_tools(hostcheck.ESP_FALLBACK_TOOLS)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    hostcheck.require_free_space(out_dir.parent)

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    publish_dir = staging / "publish"
    publish_dir.mkdir()
    try:
        record = _build_in(request, staging, publish_dir, credentials, esp_fallback, on_phase)
        record["durations_s"]["total"] = round(time.monotonic() - started, 1)
        publish.write_json(publish_dir / "build.json", record)
        publish.replace_directory(publish_dir, out_dir)
        return record
    except BaseException:
        _keep_failure_evidence(publish_dir, out_dir.parent / f"{out_dir.name}.failed")
        raise
    finally:
        _remove_staging(staging)


def _build_in(request: BuildRequest, staging: Path, publish_dir: Path,
              credentials: Credentials | None, esp_fallback: bool,
              on_phase: Callable[[str], None]) -> dict:
    timings: dict[str, float] = {}
    target = request.target
    on_phase("compose")
    mark = time.monotonic()
    # No separate kiwicheck here: `kiwi-ng system build` runs the same checks as it starts.
    composition = compose_description(request, staging / "description")
    if credentials:
        secret = staging / "credentials"
        secret.touch(mode=0o600)
        secret.write_text(f"{credentials.username}:{credentials.password}\n")
    run = kiwi_run(request, staging, credentials, esp_fallback)
    timings["compose"] = time.monotonic() - mark

    phase_started: dict[str, float] = {}

    def kiwi_phase(name: str) -> None:
        phase_started[name] = time.monotonic()
        on_phase(name)

    secrets = request.secrets(credentials)
    mark = time.monotonic()
    reuse = incremental.prepare(run, composition.path, target.name, credentials, hostcheck.kiwi_version(),
                                request.incremental, staging, publish_dir / "prepare.log", kiwi_phase, secrets)
    run = reuse.run
    timings["prepared_root"] = time.monotonic() - mark
    timings["kiwi"] = kiwi.run(run, publish_dir / "build.log", kiwi_phase, secrets)
    names = list(phase_started)
    kiwi_phases = {name: round(phase_started[after] - phase_started[name], 1)
                   for name, after in zip(names, names[1:])}

    on_phase("publish")
    mark = time.monotonic()
    artifacts = publish.collect(run.target_dir, publish_dir)
    image = artifacts["image"]
    image_digest = publish.write_checksum(image)
    sbom_file = sbom.write(artifacts["image_packages"], image, image_digest, target,
                           run.target_dir / "build" / "image-root")
    shutil.copy(composition.path / "root" / MANIFEST_PATH, publish_dir / "overlay-manifest.json")
    _publish_description(composition.path, run.target_dir, publish_dir / "description", secrets)
    timings["publish"] = time.monotonic() - mark

    on_phase("validate")
    mark = time.monotonic()
    report = validate_image(image, manifest=publish_dir / "overlay-manifest.json")
    publish.write_json(publish_dir / "validation.json", report.to_dict())
    report.write_junit(publish_dir / "validation.junit.xml")
    timings["validate"] = time.monotonic() - mark
    if not report.ok:
        failed = ", ".join(check.id for check in report.failed)
        raise CheckFailed(f"the built image failed validation: {failed}",
                          "see validation.json in the .failed directory")

    # What a verifier expects this image to measure (RTMR1/2, PCRs); its digest is in build.json.
    on_phase("measure")
    mark = time.monotonic()
    publish.write_json(publish_dir / "measurements.json", predict(image).to_dict())
    timings["measure"] = time.monotonic() - mark

    boot = None
    if request.boot_test:
        on_phase("boot test")
        mark = time.monotonic()
        boot = boot_image(image, console_log=publish_dir / "boot-console.log",
                          timeout=request.boot_timeout).to_dict()
        publish.write_json(publish_dir / "boot.json", boot)
        timings["boot_test"] = time.monotonic() - mark

    digests = publish.artifact_digests(publish_dir, {image.name: image_digest})
    return {
        "tdx_image_version": __version__,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": {"name": target.name, "title": target.title, "description": target.description,
                   "profile": target.profile, "release": target.chosen.name},
        "inputs": {
            "mirror": request.mirror,
            "repositories": [{"alias": r.alias, "url": r.url, "type": r.type,
                              "distribution": r.distribution, "gpgcheck": r.gpgcheck}
                             for r in request.repositories],
            "overlay": SHARED_OVERLAY.name,
            "overlay_files": composition.overlay_files,
            **request.custom.record(),
            "credentials_used": credentials is not None,
        },
        "host": {"kernel": platform.release(), "python": sys.version.split()[0],
                 "esp_fallback": esp_fallback},
        "tools": {"kiwi": hostcheck.kiwi_version(),
                  "qemu-img": hostcheck.tool_version(["qemu-img", "--version"])},
        "kiwi_command": [kiwi.Redactor(secrets)(word) for word in run.command()],
        "incremental": reuse.incremental,
        "incremental_reason": reuse.reason,
        "prepared_root_key": reuse.key,
        "durations_s": {**{k: round(v, 1) for k, v in timings.items()}, "kiwi_phases": kiwi_phases},
        "artifacts": digests,
        "image": image.name,
        "sbom": {"file": sbom_file.name, "format": "SPDX-2.3 JSON",
                 "sha256": digests[sbom_file.name]["sha256"]},
        "validation": {"ok": report.ok},
        "boot_test": boot,
    }


def _publish_description(composed: Path, kiwi_target: Path, destination: Path,
                         secrets: list[str]) -> None:
    """The composed description, plus KIWI's expanded state XML (repositories applied)."""
    shutil.copytree(composed, destination, symlinks=True)
    state = kiwi_target / "build" / "image-root" / "image" / "config.xml"
    if state.is_file():
        (destination / "kiwi-expanded.xml").write_text(kiwi.Redactor(secrets)(state.read_text()))


def _keep_failure_evidence(publish_dir: Path, failed_dir: Path) -> None:
    """Logs and reports of a failed build (never an image) go to ``<out>.failed/``."""
    if not publish_dir.is_dir():
        return
    evidence = [p for p in publish_dir.iterdir()
                if p.suffix in (".log", ".json", ".xml") and p.name != "kiwi.result.json"]
    if not evidence:
        return
    if failed_dir.exists():
        shutil.rmtree(failed_dir)
    failed_dir.mkdir()
    for path in evidence:
        shutil.move(path, failed_dir / path.name)


def _remove_staging(staging: Path) -> None:
    cleanup.release(staging)
    held, loops = cleanup.leftovers(staging)
    if held or loops:
        # Deleting through a live bind mount of /dev or /proc would destroy host state.
        raise HostError(f"could not release {', '.join(held + loops)}; staging left at {staging}",
                        "unmount them, detach the loop devices, then remove the directory")
    shutil.rmtree(staging, ignore_errors=True)
