"""``<image>.provenance.json``: which inputs made which image, as an in-toto Statement v1
(https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md) whose predicate is SLSA
provenance v1 (https://slsa.dev/spec/v1.0/provenance).

Subject: the published image and its SHA-256 (the one in ``<image>.sha256``).  Build type
``BUILD_TYPE`` (README "Build provenance" defines its parameters): external parameters are the
recorded settings, target and release; resolved dependencies are the composed description and the
overlay (each by its tree digest), the repositories with the SHA-256 of their metadata as read
before KIWI ran (incremental.metadata_digests), the trusted signing keys, and the KIWI and
tdx-image that built it.  The file is not signed here: signing is the CI's (README).
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .. import __version__
from ..distros.repos import Repository
from .staging import artifact_base

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:tdx-image:build-type:kiwi:v1"
SUFFIX = ".provenance.json"


def tree_digest(directory: Path) -> str:
    """SHA-256 of ``sha256sum``'s lines for every regular file below ``directory``, sorted by
    path: ``cd DIR && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum
    | sha256sum`` gives the same."""
    lines = []
    for path in sorted((p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()),
                       key=lambda p: p.relative_to(directory).as_posix().encode()):
        with open(path, "rb") as stream:
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
        lines.append(f"{digest}  {path.relative_to(directory).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def repository(repo: Repository, metadata: dict[str, str]) -> dict:
    """A repository as a resource: its URL (never credentials or tokens: those are in the probe
    URL's query only) and the digest of its metadata file as the build read it, if it did."""
    probe = repo.probe_url()
    metadata_file = probe.split("?", 1)[0].removeprefix(repo.url.rstrip("/") + "/")
    descriptor: dict = {"name": repo.alias, "uri": repo.shown_url,
                        "annotations": {"type": repo.type, "metadata": metadata_file}}
    if repo.distribution:
        descriptor["annotations"]["distribution"] = repo.distribution
    if probe in metadata:
        descriptor["digest"] = {"sha256": metadata[probe]}
    return descriptor


def statement(image: Path, image_sha256: str, *, external: dict, internal: dict,
              description: Path, overlay: Path, repositories: list[Repository],
              metadata: dict[str, str], signing_keys: list[Path], kiwi_version: str,
              builder_id: str, started: datetime, byproducts: list[Path]) -> dict:
    """The in-toto statement of one build: ``metadata`` is the repositories' metadata digests by
    probe URL (incremental.Decision), ``byproducts`` the files it names with their digests."""
    keys = [{"name": key.name, "digest": {"sha256": hashlib.sha256(key.read_bytes()).hexdigest()}}
            for key in signing_keys]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": image.name, "digest": {"sha256": image_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": [
                    {"name": "description", "digest": {"sha256": tree_digest(description)}},
                    {"name": f"overlay:{overlay.name}", "digest": {"sha256": tree_digest(overlay)}},
                    *(repository(repo, metadata) for repo in repositories),
                    *keys,
                    {"name": "kiwi", "uri": f"pkg:generic/kiwi@{kiwi_version}"},
                    {"name": "tdx-image", "uri": f"pkg:generic/tdx-image@{__version__}"},
                ],
            },
            "runDetails": {
                "builder": {"id": builder_id,
                            "version": {"tdx-image": __version__, "kiwi": kiwi_version}},
                "metadata": {"startedOn": _time(started), "finishedOn": _time(datetime.now(UTC))},
                "byproducts": [{"name": path.name, "digest": {"sha256": hashlib.sha256(
                    path.read_bytes()).hexdigest()}} for path in byproducts],
            },
        },
    }


def default_builder_id() -> str:
    """This host, when the build was not told which builder it runs on (--builder-id)."""
    return f"urn:tdx-image:builder:host:{platform.node()}"


def started(total_seconds: float) -> datetime:
    """When the build started, from how long it has run so far (progress.Durations)."""
    return datetime.now(UTC) - timedelta(seconds=total_seconds)


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def write(image: Path, statement_: dict) -> Path:
    """``<image>.provenance.json`` beside the image (image name without its format suffix)."""
    destination = image.parent / f"{artifact_base(image.name)}{SUFFIX}"
    destination.write_text(json.dumps(statement_, indent=2, sort_keys=True) + "\n")
    return destination
