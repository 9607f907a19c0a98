"""``tdx-image build``: the whole flow for one target, in order.

target -> repositories and host checks -> composed description -> KIWI run -> artifacts ->
validation (-> boot test) -> build record -> one rename into ``--out``.
All work happens in a staging directory beside ``--out``; on failure or interrupt it is
released (mounts, loop devices) and removed, and only the log and reports are kept, in
``<out>.failed/``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from datetime import UTC, datetime
from pathlib import Path

from . import (__version__, cleanup, hostcheck, incremental, kiwi, kiwicheck, locks, outdir,
               publish, sbom, signals)
from .boot import boot_image
from .compose import MANIFEST_PATH, Customisation, compose, read_ssh_keys
from .errors import (CheckFailed, CredentialsError, HostError, InputError, Interrupted,
                     RepositoryError, TdxImageError)
from .inputs import require_regular_file, require_writable_dir
from .measure import predict
from .repos import Credentials, Repository, check_reachable, load_credentials
from .schemas import SCHEMA_VERSION
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
    force: bool = False  # replace an --out that holds something other than an earlier output

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
    """What a build would do: let KIWI check the composed description (in a temporary directory,
    removed again) and return the kiwi-ng command as the build would run it, beside --out."""
    out_dir = outdir.check(request.out_dir, request.force, request.cache_dir)
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
    staging = out_dir.parent / f".{out_dir.name}.staging-XXXXXXXX"
    with tempfile.TemporaryDirectory(prefix=f"tdx-image-dry-run-{request.target.name}-") as work:
        compose_description(request, Path(work) / "description")
        kiwicheck.check_description(Path(work) / "description", request.target.profile,
                                    request.repositories)
    run = kiwi_run(request, staging, credentials, esp_fallback=not hostcheck.kernel_mounts_vfat())
    redact = kiwi.Redactor(request.secrets(credentials))
    state = ("absent: will be created" if not os.path.lexists(out_dir) else
             "empty or an earlier output: will be replaced" if outdir.replaceable(out_dir) else
             "not ours: will be replaced (--force)")
    return {"target": request.target.name, "release": request.target.chosen.name,
            "out": str(out_dir), "out_state": state, "staging": str(staging),
            "description": str(run.description), "command": [redact(word) for word in run.command()],
            "esp_fallback": run.esp_fallback_dir is not None, "note": note}


def build(request: BuildRequest, on_phase: Callable[[str], None]) -> dict:
    """Build, check and publish; return the build record (also written as build.json)."""
    started = time.monotonic()
    target = request.target
    # --out first (refused before anything else), then a host that cannot build this target at
    # all, then the user's other inputs, then root.
    out_dir = outdir.check(request.out_dir, request.force, request.cache_dir)
    hostcheck.require_build_host(target)
    if request.custom.ssh_key:
        read_ssh_keys(request.custom.ssh_key)
    for key in request.signing_keys:
        require_regular_file(key, "--signing-key")
    credentials = request.credentials()
    hostcheck.require_root()
    require_writable_dir(out_dir.parent, f"--out {out_dir}")
    require_writable_dir(request.cache_dir, f"--cache-dir {request.cache_dir}")
    with locks.lock_out(out_dir):
        outdir.check(out_dir, request.force, request.cache_dir)  # as it is now that it is ours
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
        return _stage_and_publish(request, out_dir, credentials, esp_fallback, on_phase, started)


def _stage_and_publish(request: BuildRequest, out_dir: Path, credentials: Credentials | None,
                       esp_fallback: bool, on_phase: Callable[[str], None], started: float) -> dict:
    """Everything happens in a staging directory beside --out; only a complete, validated set
    is swapped in.  Whatever ends the build, the staging directory is released and removed and
    the log and reports are kept in OUT.failed/."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    publish_dir = staging / "publish"
    try:
        publish_dir.mkdir()
        record = _build_in(request, staging, publish_dir, out_dir, credentials, esp_fallback,
                           on_phase)
        record["durations_s"]["total"] = round(time.monotonic() - started, 1)
        publish.write_json(publish_dir / "build.json", record)
        with signals.deferred():
            outdir.check(out_dir, request.force, request.cache_dir)  # nobody wrote there meanwhile
            publish.replace_directory(publish_dir, out_dir)
        return record
    except BaseException as error:
        with signals.deferred():
            try:
                failed = _keep_failure_evidence(publish_dir, outdir.failed_dir(out_dir), error)
            except OSError:  # never let this hide why the build failed
                failed = None
        if isinstance(error, (KeyboardInterrupt, Interrupted)):
            where = f"its log is in {failed}/" if failed else "it had written no log yet"
            raise Interrupted(f"build stopped by {signals.received_name()}; children stopped, "
                              "staging removed, nothing published", where) from None
        raise
    finally:
        with signals.deferred():
            _remove_staging(staging)


def _build_in(request: BuildRequest, staging: Path, publish_dir: Path, out_dir: Path,
              credentials: Credentials | None, esp_fallback: bool,
              on_phase: Callable[[str], None]) -> dict:
    timings: dict[str, float] = {}
    # Records name files where they will be once published, not where they are built.
    final = publish.Relocation({publish_dir: str(out_dir), staging: "<staging>",
                                staging / "description": str(out_dir / "description")})
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
    with locks.lock_cache(request.cache_dir, on_phase) as cache:
        def kiwi_phase_releasing_cache(name: str) -> None:
            if name == kiwi.CACHE_DONE_PHASE:
                cache.release()  # KIWI is done with the package manager: the next build may go
            kiwi_phase(name)

        mark = time.monotonic()
        reuse = incremental.prepare(run, composition.path, target.name, credentials,
                                    hostcheck.kiwi_version(), request.incremental, staging,
                                    publish_dir / "prepare.log", kiwi_phase_releasing_cache, secrets)
        run = reuse.run
        timings["prepared_root"] = time.monotonic() - mark
        timings["kiwi"] = kiwi.run(run, publish_dir / "build.log", kiwi_phase_releasing_cache,
                                   secrets)
    names = list(phase_started)
    kiwi_phases = {name: round(phase_started[after] - phase_started[name], 1)
                   for name, after in itertools.pairwise(names)}

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
    publish.write_json(publish_dir / "validation.json", final(report.to_dict()))
    report.write_junit(publish_dir / "validation.junit.xml")
    timings["validate"] = time.monotonic() - mark
    if not report.ok:
        failed = ", ".join(check.id for check in report.failed)
        raise CheckFailed(f"the built image failed validation: {failed}",
                          "see validation.json in the .failed directory")

    # What a verifier expects this image to measure (RTMR1/2, PCRs); its digest is in build.json.
    on_phase("measure")
    mark = time.monotonic()
    publish.write_json(publish_dir / "measurements.json", final(predict(image).to_dict()))
    timings["measure"] = time.monotonic() - mark

    boot = None
    if request.boot_test:
        on_phase("boot test")
        mark = time.monotonic()
        boot = final(boot_image(image, console_log=publish_dir / "boot-console.log",
                                timeout=request.boot_timeout).to_dict())
        publish.write_json(publish_dir / "boot.json", boot)
        timings["boot_test"] = time.monotonic() - mark

    digests = publish.artifact_digests(publish_dir, {image.name: image_digest})
    return {
        "schema_version": SCHEMA_VERSION,
        "tdx_image_version": __version__,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
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
        "kiwi_command": final([kiwi.Redactor(secrets)(word) for word in run.command()]),
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


def _keep_failure_evidence(publish_dir: Path, failed_dir: Path,
                           error: BaseException) -> Path | None:
    """Logs and reports of a failed build (never an image) go to ``OUT.failed/``, with
    failure.json saying what went wrong.  OUT.failed is only replaced when an earlier run wrote
    it; otherwise (someone put something there during the build) a fresh OUT.failed-XXXX is used."""
    if not publish_dir.is_dir():
        return None
    evidence = [p for p in publish_dir.iterdir()
                if p.suffix in (".log", ".json", ".xml") and p.name != "kiwi.result.json"]
    if not evidence:
        return None
    if not outdir.replaceable(failed_dir):
        failed_dir = Path(tempfile.mkdtemp(prefix=f"{failed_dir.name}-", dir=failed_dir.parent))
    if isinstance(error, TdxImageError):
        error.relocate(str(publish_dir), str(failed_dir))  # e.g. the log path in KIWI's error
    collected = publish_dir.parent / "failed"
    collected.mkdir()
    for path in evidence:
        path.rename(collected / path.name)
    if isinstance(error, TdxImageError):
        message, exit_code = str(error), error.exit_code
    elif isinstance(error, KeyboardInterrupt):
        message, exit_code = f"stopped by {signals.received_name()}", Interrupted.exit_code
    else:
        message, exit_code = repr(error), 1
    publish.write_json(collected / outdir.FAILURE_RECORD, {
        "tdx_image_version": __version__,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "error": message, "exit_code": exit_code, "files": sorted(path.name for path in evidence)})
    publish.replace_directory(collected, failed_dir)
    return failed_dir


def _remove_staging(staging: Path) -> None:
    cleanup.release(staging)
    held, loops = cleanup.leftovers(staging)
    if held or loops:
        # Deleting through a live bind mount of /dev or /proc would destroy host state.
        raise HostError(f"could not release {', '.join(held + loops)}; staging left at {staging}",
                        "unmount them, detach the loop devices, then remove the directory")
    shutil.rmtree(staging, ignore_errors=True)
