"""``tdx-image build``: the whole flow for one target, in order.

target -> repositories and host checks -> composed description -> KIWI run -> artifacts ->
validation (-> boot test) -> build record -> one rename into ``--out``.
All work happens in a staging directory beside ``--out``; on failure or interrupt it is
released (mounts, loop devices) and removed, and only the log and reports are kept, in
``<out>.failed/``.  A ``BuildContext`` carries one build's request, staging layout and the state
its steps hand on; each step runs as a phase (progress.py) whose events feed the display,
``--progress=json`` and build.json's durations.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from .. import __version__
from . import (cleanup, cloudcommands, incremental, kiwi, kiwicheck, outdir, provenance, publish,
               recover, sbom, settings)
from ..host import buildhost, locks, requirements, runner, signals
from ..host.facts import HostFacts
from ..vm.boot import NOT_EMULATED, boot_image
from ..core.defaults import DEFAULT_BOOT_TIMEOUT_S
from .compose import VERITY, WRITABLE, Composition, Customisation, compose, read_ssh_keys
from ..core.errors import CheckFailed, CredentialsError, InputError, Interrupted, RepositoryError, TdxImageError
from ..core.inputs import require_regular_file, require_writable_dir
from ..measure import predict
from .progress import Durations, Listener, Phases
from .staging import FAILURE_RECORD, PUBLISHED_DESCRIPTION, Staging
from ..distros.clouds import Cloud, get_cloud
from ..distros.repos import Credentials, Repository, check_reachable, load_credentials
from ..schemas import SCHEMA_VERSION
from ..core.defaults import DEFAULT_CACHE_DIR
from ..distros.targets import Target
from ..core.paths import SHARED_OVERLAY
from ..validate import validate_image

WRITABLE_ROOT_NOTE = ("--root writable: the host can modify this image's root file system between "
                      "boots, and no measurement shows it (--root verity seals it where the release "
                      "can: debian 13)")

def boot_test_not_run(cloud: Cloud) -> str:
    """Why --boot-test cannot boot an image for ``cloud`` here (one QEMU cannot attach as the
    cloud does)."""
    return (f"--boot-test not run: on {cloud.title} {NOT_EMULATED[cloud.disk_interface]}; the "
            f"image was checked offline only (validate --cloud {cloud.name})")


ESP_FALLBACK_NOTE = ("this kernel cannot mount vfat; the EFI partition is written with mtools "
                     "instead (ESP fallback)")


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked for (settings.SETTINGS names where each value comes from)."""

    target: Target
    out_dir: Path
    mirror: str | None = None
    ltss: bool = False  # SLES 15 SPx: the LTSS update repository too
    extra_repositories: tuple[Repository, ...] = ()
    credentials_file: Path | None = None
    signing_keys: tuple[Path, ...] = ()
    custom: Customisation = Customisation()
    cache_dir: Path = DEFAULT_CACHE_DIR
    boot_test: bool = False
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT_S
    incremental: bool = True  # reuse a cached prepared root when its key matches (incremental.py)
    force: bool = False  # replace an --out that holds something other than an earlier output
    supplier: str | None = None  # "Name <contact>": the image's supplier, its SBOMs' author
    builder_id: str | None = None  # the provenance's builder.id (default: this host)

    @property
    def cloud(self) -> Cloud:
        return get_cloud(self.custom.cloud)

    @cached_property
    def repositories(self) -> list[Repository]:
        # Target repositories first: KIWI pairs credentials with the leading --add-repo values.
        return self.target.repositories(self.mirror, self.ltss) + list(self.extra_repositories)

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
            secret for repo in self.repositories for secret in repo.secrets()]


@dataclass(frozen=True)
class BuildContext:
    """One build: the request, where it stages, the host facts and credentials resolved once,
    and the phases it reports.  Steps take it with what the steps before them made, and return
    what they make."""

    request: BuildRequest
    out_dir: Path
    staging: Staging
    host: HostFacts
    credentials: Credentials | None
    phases: Phases
    durations: Durations

    def phase(self, name: str, message: str | None = None) -> AbstractContextManager[None]:
        """Run a step of the build as a phase: timed, and reported as it starts and ends."""
        return self.phases.phase(name, message)

    @cached_property
    def secrets(self) -> list[str]:
        return self.request.secrets(self.credentials)

    @cached_property
    def redact(self) -> runner.Redactor:
        return runner.Redactor(self.secrets)

    @cached_property
    def final(self) -> publish.Relocation:
        """Records name files where they will be once published, not where they are built."""
        return publish.Relocation({self.staging.publish: str(self.out_dir),
                                   self.staging.root: "<staging>",
                                   self.staging.description: str(self.out_dir / PUBLISHED_DESCRIPTION)})


@dataclass(frozen=True)
class Published:
    """What the publish step made: the image, its digest, the SBOMs (by format) and the overlay
    manifest."""

    image: Path
    image_digest: str
    sboms: dict[str, Path]
    manifest: Path


def kiwi_invocation(request: BuildRequest, host: HostFacts, staging: Staging,
                    credentials: Credentials | None) -> kiwi.KiwiInvocation:
    """The kiwi-ng run that builds ``request`` in ``staging``."""
    return kiwi.KiwiInvocation(
        kiwi=host.kiwi_command,
        description=staging.description,
        target_dir=staging.kiwi_target,
        cache_dir=request.cache_dir,
        repositories=request.repositories,
        profile=request.target.profile,
        credentials_file=staging.credentials if credentials else None,
        signing_keys=list(request.signing_keys),
        esp_fallback_dir=None if host.mounts_vfat else staging.esp_fallback,
        temp_dir=staging.kiwi_temp,
    )


def compose_description(request: BuildRequest, destination: Path) -> Composition:
    """The target's description for the chosen release, plus the shared overlay."""
    composition = compose(request.target.description_dir, SHARED_OVERLAY, destination,
                          request.custom)
    request.target.apply_release(destination)
    return composition


def dry_run(request: BuildRequest, host: HostFacts) -> dict:
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
    with tempfile.TemporaryDirectory(prefix=f"tdx-image-dry-run-{request.target.name}-") as work:
        compose_description(request, Path(work) / "description")
        kiwicheck.check_description(Path(work) / "description", request.target.profile,
                                    request.repositories)
    # The staging directory's random suffix is made when a build starts.
    staging = Staging(out_dir.parent / f".{out_dir.name}{outdir.STAGING_SUFFIX}XXXXXXXX")
    invocation = kiwi_invocation(request, host, staging, credentials)
    redact = runner.Redactor(request.secrets(credentials))
    state = ("absent: will be created" if not os.path.lexists(out_dir) else
             "empty or an earlier output: will be replaced" if outdir.replaceable(out_dir) else
             "not ours: will be replaced (--force)")
    return {"target": request.target.name, "release": request.target.chosen.name,
            "out": str(out_dir), "out_state": state, "staging": str(staging.root),
            "description": str(invocation.description),
            "command": [redact(word) for word in invocation.command()],
            "esp_fallback": invocation.esp_fallback_dir is not None, "note": note,
            "warning": request.target.chosen.end_of_life_warning()}


def build(request: BuildRequest, on_event: Listener, host: HostFacts) -> dict:
    """Build, check and publish; return the build record (also written as build.json)."""
    durations = Durations()
    phases = Phases(on_event, durations)
    # A host that cannot build this target at all says so first, then --out, then the user's
    # other inputs, then the host's root, tools and space.
    requirements.require(f"build:{request.target.package_manager}",
                         context=requirements.Context(host, target=request.target))
    out_dir = outdir.check(request.out_dir, request.force, request.cache_dir)
    if request.custom.ssh_key:
        read_ssh_keys(request.custom.ssh_key)
    for key in request.signing_keys:
        require_regular_file(key, "--signing-key")
    credentials = request.credentials()
    preflight(request, out_dir, host)
    end_of_life = request.target.chosen.end_of_life_warning()
    if end_of_life:
        phases.note(f"warning: {end_of_life}")
    if not host.mounts_vfat:
        phases.note(ESP_FALLBACK_NOTE)
    if request.custom.root == WRITABLE:
        phases.note(WRITABLE_ROOT_NOTE)
    if request.boot_test and not request.cloud.emulated:
        phases.note(boot_test_not_run(request.cloud))
    with locks.lock_out(out_dir):
        outdir.check(out_dir, request.force, request.cache_dir)  # as it is now that it is ours
        for stale in recover.remove_stale_staging(out_dir):
            phases.note(f"removed the staging directory a killed build left: {stale}")
        with phases.phase("check repositories"):
            try:
                check_reachable(request.repositories, credentials)
            except RepositoryError as gone:
                if end_of_life:  # mirrors drop a release some time after its end
                    raise RepositoryError(gone.message, end_of_life) from None
                raise
        return _stage_and_publish(request, out_dir, lambda staging: _build_in(
            BuildContext(request, out_dir, staging, host, credentials, phases, durations)))


def preflight(request: BuildRequest, out_dir: Path, host: HostFacts) -> None:
    """What the host must offer before a KIWI run is worth starting (requirements.py)."""
    requirements.require("root", context=requirements.Context(host))
    require_writable_dir(out_dir.parent, f"--out {out_dir}")
    require_writable_dir(request.cache_dir, f"--cache-dir {request.cache_dir}")
    requirements.require("build", context=requirements.Context(host, build_dir=out_dir.parent,
                                                               target=request.target))
    if request.target.chosen.boots_uki:
        requirements.require("build:uki", context=requirements.Context(host, target=request.target))
    if request.custom.root == VERITY:
        requirements.require("build:verity", context=requirements.Context(host, target=request.target))


def _stage_and_publish(request: BuildRequest, out_dir: Path,
                       build_in: Callable[[Staging], dict]) -> dict:
    """Everything happens in a staging directory beside --out; only a complete, validated set
    is swapped in.  Whatever ends the build, the staging directory is released and removed and
    the log and reports are kept in OUT.failed/."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Staging(Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{outdir.STAGING_SUFFIX}",
                                            dir=out_dir.parent)))
    recover.mark(staging, out_dir)
    try:
        staging.publish.mkdir()
        record = build_in(staging)
        publish.write_json(staging.build_record, record)
        with signals.deferred():
            outdir.check(out_dir, request.force, request.cache_dir)  # nobody wrote there meanwhile
            publish.replace_directory(staging.publish, out_dir)
        return record
    except BaseException as error:
        with signals.deferred():
            try:
                failed = _keep_failure_evidence(staging, outdir.failed_dir(out_dir), error)
            except OSError:  # never let this hide why the build failed
                failed = None
        if isinstance(error, (KeyboardInterrupt, Interrupted)):
            where = f"its log is in {failed}/" if failed else "it had written no log yet"
            raise Interrupted(f"build stopped by {signals.received_name()}; children stopped, "
                              "staging removed, nothing published", where) from None
        raise
    finally:
        with signals.deferred():
            cleanup.remove(staging.root)


def _build_in(context: BuildContext) -> dict:
    composition = _compose(context)
    decision = _run_kiwi(context)
    published = _publish(context, composition)
    _validate(context, published)
    _measure(context, published.image)
    boot = (_boot_test(context, published.image)
            if context.request.boot_test and context.request.cloud.emulated else None)
    provenance_file = _provenance(context, composition, decision, published)
    digests = publish.artifact_digests(context.staging.publish,
                                       {published.image.name: published.image_digest})
    return _record(context, composition, decision, published, provenance_file, digests, boot)


def _compose(context: BuildContext) -> Composition:
    staging = context.staging
    with context.phase("compose"):
        # No separate kiwicheck here: `kiwi-ng system build` runs the same checks as it starts.
        composition = compose_description(context.request, staging.description)
        if context.credentials:
            staging.credentials.touch(mode=0o600)
            staging.credentials.write_text(
                f"{context.credentials.username}:{context.credentials.password}\n")
    return composition


def _run_kiwi(context: BuildContext) -> incremental.Decision:
    """The prepared root (cached or made, incremental.py), then KIWI's build, holding the package
    cache until KIWI is done with the package manager.  KIWI's phases are steps of these.
    Returns the incremental decision, whose invocation is the KIWI run that built the image."""
    request, staging = context.request, context.staging
    with _package_cache(context) as hand_on:
        def kiwi_step(name: str) -> None:
            if name == kiwi.CACHE_DONE_PHASE:
                hand_on()  # KIWI is done with the package manager: the next build may go
            context.phases.step(None if name == kiwi.DONE_PHASE else name)

        with context.phase("prepared root"):
            decision = incremental.prepare(
                kiwi_invocation(request, context.host, staging, context.credentials), staging,
                request.target.name, context.credentials, context.host.kiwi_version,
                request.incremental, kiwi_step, context.secrets)
        with context.phase("kiwi"):
            kiwi.execute(decision.invocation, staging.build_log, kiwi_step, context.secrets)
    return decision


def _publish(context: BuildContext, composition: Composition) -> Published:
    request, staging = context.request, context.staging
    with context.phase("publish"):
        artifacts = publish.collect(staging.kiwi_target, staging.publish, request.cloud)
        image = artifacts["image"]
        image_digest = publish.write_checksum(image)
        sboms = sbom.write(artifacts["image_packages"], sbom.Image(
            image, image_digest, request.target,
            sbom.parse_supplier(request.supplier) if request.supplier else None),
            staging.image_root, request.cache_dir)
        manifest = publish.overlay_manifest(composition.path, staging.publish)
        publish.description(composition.path, staging.kiwi_target, staging.published_description,
                            context.redact)
    return Published(image, image_digest, sboms, manifest)


def _validate(context: BuildContext, published: Published) -> None:
    staging = context.staging
    with context.phase("validate"):
        report = validate_image(published.image, manifest=published.manifest,
                                cloud=context.request.cloud)
        publish.write_json(staging.validation, context.final(report.to_dict()))
        report.write_junit(staging.validation_junit)
        if not report.ok:
            failed = ", ".join(check.id for check in report.failed)
            raise CheckFailed(f"the built image failed validation: {failed}",
                              "see validation.json in the .failed directory")


def _measure(context: BuildContext, image: Path) -> None:
    """What a verifier expects this image to measure (RTMR1/2, PCRs); its digest is in build.json."""
    with context.phase("measure"):
        publish.write_json(context.staging.measurements, context.final(predict(image).to_dict()))


def _boot_test(context: BuildContext, image: Path) -> dict:
    staging = context.staging
    with context.phase("boot test"):
        boot = context.final(boot_image(image, console_log=staging.boot_console,
                                        timeout=context.request.boot_timeout,
                                        cloud=context.request.cloud).to_dict())
        publish.write_json(staging.boot_record, boot)
    return boot


def _provenance(context: BuildContext, composition: Composition, decision: incremental.Decision,
                published: Published) -> Path:
    """The image's build provenance, after everything that ran on it (its finishing time)."""
    request = context.request
    statement = provenance.statement(
        published.image, published.image_digest,
        external={"target": request.target.name, "release": request.target.chosen.name,
                  **settings.recorded(request)},
        internal={"profile": request.target.profile, "incremental": decision.incremental,
                  "prepared_root_key": decision.key},
        description=composition.path, overlay=SHARED_OVERLAY, repositories=request.repositories,
        metadata=decision.metadata, signing_keys=list(request.signing_keys),
        kiwi_version=context.host.kiwi_version,
        builder_id=request.builder_id or provenance.default_builder_id(),
        started=provenance.started(context.durations.record()["total"]),
        byproducts=list(published.sboms.values()))
    return provenance.write(published.image, context.final(statement))


@contextmanager
def _package_cache(context: BuildContext) -> Iterator[Callable[[], None]]:
    """Hold the package cache; a wait for another build's package manager is a phase of its own.

    Yields the call that hands the cache on.  KIWI's zypper leaves the repository password in
    the cache (kiwi.repository_credentials_files): it is removed whenever this build lets go of the
    cache — when KIWI is done with the package manager, or on failure or signal — and never
    after, when the file may be the next build's.
    """
    cache_dir = context.request.cache_dir
    aliases = [repository.alias for repository in context.request.repositories]
    with ExitStack() as waiting:
        lock = locks.lock_cache(cache_dir, lambda message: waiting.enter_context(
            context.phase("wait for the package cache", message)))

    def hand_on() -> None:
        if lock.held:
            kiwi.remove_repository_credentials(cache_dir, aliases)
            lock.release()

    with lock:
        try:
            kiwi.seal_repository_credentials(cache_dir, aliases)
            yield hand_on
        finally:
            with signals.deferred():
                hand_on()


def _record(context: BuildContext, composition: Composition, decision: incremental.Decision,
            published: Published, provenance_file: Path, digests: dict[str, dict],
            boot: dict | None) -> dict:
    """build.json: what was built from what, how long each phase took, what was published."""
    request, target = context.request, context.request.target
    return {
        "schema_version": SCHEMA_VERSION,
        "tdx_image_version": __version__,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "target": {"name": target.name, "title": target.title, "description": target.description,
                   "profile": target.profile, "release": target.chosen.name},
        "inputs": {
            **settings.recorded(request),
            "repositories": [{"alias": r.alias, "url": r.shown_url, "type": r.type,
                              "distribution": r.distribution, "gpgcheck": r.gpgcheck}
                             for r in request.repositories],
            "overlay": SHARED_OVERLAY.name,
            "overlay_files": composition.overlay_files,
            "credentials_used": context.credentials is not None,
        },
        "host": {"kernel": platform.release(), "python": sys.version.split()[0],
                 "esp_fallback": not context.host.mounts_vfat},
        "tools": {"kiwi": context.host.kiwi_version,
                  "qemu-img": buildhost.tool_version(["qemu-img", "--version"])},
        "kiwi_command": context.final([context.redact(word) for word in decision.invocation.command()]),
        "incremental": decision.incremental,
        "incremental_reason": decision.reason,
        "prepared_root_key": decision.key,
        "durations_s": context.durations.record(),
        "artifacts": digests,
        outdir.DESCRIPTION_FILES: outdir.description_files(context.staging.published_description),
        "image": published.image.name,
        **{key: {"file": path.name, "format": format_,
                 "sha256": digests[path.name]["sha256"]} for key, path, format_ in (
            ("sbom", published.sboms["spdx"], "SPDX-2.3 JSON"),
            ("sbom_spdx3", published.sboms["spdx3"], "SPDX-3.0.1 JSON-LD"),
            ("sbom_cyclonedx", published.sboms["cyclonedx"], "CycloneDX-1.6 JSON"),
            ("provenance", provenance_file, "in-toto Statement v1, SLSA provenance v1"))},
        "validation": {"ok": True},
        "boot_test": boot,
        "cloud": cloud_record(request, published.image.name),
    }


def cloud_record(request: BuildRequest, image_file: str) -> dict:
    """build.json's ``cloud``: where the image runs, why a boot test asked for was not run, and
    the commands that take it there (printed, never run)."""
    cloud = request.cloud
    return {"name": cloud.name, "title": cloud.title,
            "boot_test_not_run": boot_test_not_run(cloud)
            if request.boot_test and not cloud.emulated else None,
            "next_steps": [step.to_dict() for step in cloudcommands.next_steps(
                cloud, image_file, request.target.chosen.version)]}


def _keep_failure_evidence(staging: Staging, failed_dir: Path,
                           error: BaseException) -> Path | None:
    """Logs and reports of a failed build (never an image) go to ``OUT.failed/``, with
    failure.json saying what went wrong.  OUT.failed is only replaced when an earlier run wrote
    it; otherwise (someone put something there during the build) a fresh OUT.failed-XXXX is used."""
    if not staging.publish.is_dir():
        return None
    evidence = [p for p in staging.publish.iterdir()
                if p.suffix in (".log", ".json", ".xml") and p.name != "kiwi.result.json"]
    if not evidence:
        return None
    if not outdir.replaceable(failed_dir):
        failed_dir = Path(tempfile.mkdtemp(prefix=f"{failed_dir.name}-", dir=failed_dir.parent))
    if isinstance(error, TdxImageError):
        error.relocate(str(staging.publish), str(failed_dir))  # e.g. the log path in KIWI's error
    staging.failed.mkdir()
    for path in evidence:
        path.rename(staging.failed / path.name)
    if isinstance(error, TdxImageError):
        message, exit_code = str(error), error.exit_code
    elif isinstance(error, KeyboardInterrupt):
        message, exit_code = f"stopped by {signals.received_name()}", Interrupted.exit_code
    else:
        message, exit_code = repr(error), 1
    publish.write_json(staging.failed / FAILURE_RECORD, {
        "tdx_image_version": __version__,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "error": message, "exit_code": exit_code, "files": sorted(path.name for path in evidence)})
    publish.replace_directory(staging.failed, failed_dir)
    return failed_dir


