"""Incremental builds: reuse the image root as it stands after package installation.

What decides that root is hashed into a key: the description's ``<packages>``, ``<repository>``
and package-manager preferences (plus any file it includes), ``post_bootstrap.sh``, the target,
profile, architecture, the repositories KIWI is given, their signing keys, a digest of each
repository's metadata as it is now (apt ``InRelease``, rpm-md ``repomd.xml``) and the KIWI
version.  The overlay, ``config.sh`` and every setting KIWI applies after installing packages
(type, boot loader, kernel command line, users, ...) are not part of it.

No root for the key (cold): ``kiwi-ng system prepare`` runs on the description reduced to what
the key covers (no overlay ``root/``, no scripts but ``post_bootstrap.sh``, no package deletions)
into the staging directory; a copy goes into ``<cache-dir>/prepared-roots/.tmp-*`` and is renamed
to its key when complete, so an interrupted build never leaves a half root that looks valid.  A
lock file serialises builds sharing the cache.  A root for the key (warm): it is copied into
KIWI's target directory.  Either way ``kiwi-ng system build --allow-existing-root`` then runs
the full composed description without its bootstrap section: KIWI skips bootstrapping, finds
every package installed (nothing newer can come in: the repository metadata is in the key), and
applies overlay, ``config.sh``, boot loader and disk exactly as in a clean build.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import platform
import shutil
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import cleanup, kiwi
from ..host import runner
from ..core.errors import HostError
from ..distros.repos import Credentials, Repository, metadata_request
from .staging import Staging

KEY_VERSION = 2  # bump when what goes into a prepared root changes in this module
ROOTS_DIR = "prepared-roots"
KEEP_ROOTS = 2  # most recently used roots kept per cache directory (about 0.5 GB each)
# What the cache itself names (a root's key, a copy in progress): nothing else in the directory
# is touched, should --cache-dir point at a directory that already had a prepared-roots/.
ROOT_NAME = re.compile(r"[0-9a-f]{64}")
TEMPORARY_NAME = re.compile(r"\.tmp-[0-9a-f]{16}-[0-9]+")
# Preferences that steer the package manager while packages are installed.
PACKAGE_PREFERENCES = ("packagemanager", "rpm-excludedocs", "rpm-check-signatures",
                       "rpm-locale-filtering", "locale")
# Description files the reduced description keeps: what runs before or while packages install.
PREPARE_FILES = ("post_bootstrap.sh",)
# Package sections KIWI applies after config.sh: left to the full build.
LATE_PACKAGE_TYPES = ("delete", "uninstall")
# Sections the key does not cover, so the prepared root must not hold their effect: users are
# created by the full build, after the overlay is placed, as in a plain KIWI build.
LATE_SECTIONS = ("users",)


@dataclass(frozen=True)
class Decision:
    incremental: bool  # True: a cached root was reused
    reason: str
    key: str
    invocation: kiwi.KiwiInvocation  # the KIWI build to run now
    # sha256 of each repository's metadata file by its probe URL, as read before KIWI ran (the
    # build's provenance names them); empty when it could not be read
    metadata: dict[str, str]


def _canonical(element: ElementTree.Element) -> str:
    return ElementTree.tostring(element, encoding="unicode").strip()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metadata_digests(repositories: list[Repository], credentials: Credentials | None,
                     timeout: float = 30) -> dict[str, str]:
    """sha256 of each repository's metadata file now; raises OSError if one cannot be read."""
    digests = {}
    for repo in repositories:
        url = repo.probe_url()
        if url.startswith("file://"):
            digests[url] = _digest(Path(url[len("file://"):]).read_bytes())
            continue
        with urllib.request.urlopen(metadata_request(repo, credentials), timeout=timeout) as response:
            digests[url] = _digest(response.read())
    return digests


def root_key(description: Path, target: str, invocation: kiwi.KiwiInvocation, kiwi_version: str,
             metadata: dict[str, str]) -> str:
    """The key of the prepared root ``invocation`` would install from ``description``."""
    xml = ElementTree.parse(description / "config.xml").getroot()
    inputs = {
        "key_version": KEY_VERSION,
        "target": target,
        "profile": invocation.profile or "",
        "arch": platform.machine(),
        "kiwi": kiwi_version,
        "packages": [_canonical(element) for element in xml.iter("packages")],
        "description_repositories": [_canonical(element) for element in xml.iter("repository")],
        "preferences": [_canonical(element) for preferences in xml.iter("preferences")
                        for element in preferences if element.tag in PACKAGE_PREFERENCES],
        # post_bootstrap.sh, archives, and included fragments (which may hold any of the above)
        "files": {name: _digest((description / name).read_bytes())
                  for name in _prepare_files(xml) if (description / name).is_file()},
        "repositories": [repo.kiwi_add_repo() for repo in invocation.repositories],
        "signing_keys": [_digest(Path(key).read_bytes()) for key in invocation.signing_keys],
        "repository_metadata": metadata,
    }
    return _digest(json.dumps(inputs, sort_keys=True).encode())


def _prepare_files(image: ElementTree.Element) -> list[str]:
    """Files besides config.xml that installing packages reads: post_bootstrap.sh, included
    fragments and archives unpacked with the packages."""
    included = [element.get("from", "").removeprefix("this://") for element in image.iter("include")]
    archives = [element.get("name", "") for element in image.iter("archive")]
    return [name for name in (*PREPARE_FILES, *included, *archives) if name]


def _reduced_description(description: Path, destination: Path) -> None:
    """The description as far as installing packages goes: config.xml and post_bootstrap.sh."""
    destination.mkdir()
    xml = ElementTree.parse(description / "config.xml")
    image = xml.getroot()
    late = [element for element in image.findall("packages")
            if element.get("type") in LATE_PACKAGE_TYPES]
    late += [element for name in LATE_SECTIONS for element in image.findall(name)]
    for element in late:
        image.remove(element)
    xml.write(destination / "config.xml", encoding="utf-8", xml_declaration=True)
    for name in _prepare_files(image):
        if (description / name).is_file():
            shutil.copy2(description / name, destination / name)


def _without_bootstrap(description: Path, destination: Path) -> None:
    """The composed description, minus its bootstrap section: KIWI then skips bootstrapping."""
    shutil.copytree(description, destination, symlinks=True)
    xml = ElementTree.parse(destination / "config.xml")
    image = xml.getroot()
    for packages in [element for element in image.findall("packages") if element.get("type") == "bootstrap"]:
        image.remove(packages)
    xml.write(destination / "config.xml", encoding="utf-8", xml_declaration=True)


def _copy_tree(source: Path, destination: Path) -> None:
    """Hard links, ownership, modes, times, ACLs and xattrs (file capabilities) kept."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    copied = runner.run(["cp", "-a", "--reflink=auto", str(source), str(destination)], text=True)
    if copied.returncode != 0:
        raise HostError(f"cannot copy the prepared root: {copied.stderr.strip()}",
                        "check free space in the cache and output directories")


def _show_apt_what_is_installed(root: Path) -> None:
    """KIWI's apt-get in the root reads package state from ``status.kiwi``, which KIWI leaves empty
    after bootstrapping: on a prepared root it would unpack every package again.  Given dpkg's
    real status it installs nothing (the debian config.sh empties the file again, as in a clean build).
    """
    status, kiwi_status = root / "var/lib/dpkg/status", root / "var/lib/dpkg/status.kiwi"
    if kiwi_status.is_file() and status.is_file():
        shutil.copyfile(status, kiwi_status)


class RootCache:
    """``<cache-dir>/prepared-roots/<key>/root``, complete or absent; ``.lock`` serialises writers."""

    def __init__(self, cache_dir: Path):
        self.directory = cache_dir / ROOTS_DIR

    def locked(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = open(self.directory / ".lock", "w")  # noqa: SIM115 - the caller holds it as the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock  # closing it releases the lock

    def lookup(self, key: str) -> Path | None:
        root = self.directory / key / "root"
        if not root.is_dir():
            return None
        os.utime(self.directory / key)  # most recently used
        return root

    def store(self, key: str, root: Path) -> None:
        """Copy ``root`` in under a temporary name, then rename it to its key (atomic)."""
        self._remove_abandoned()
        temporary = self.directory / f".tmp-{key[:16]}-{os.getpid()}"
        try:
            _copy_tree(root, temporary / "root")
            os.rename(temporary, self.directory / key)
            os.utime(self.directory / key)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        self._evict()

    def _remove_abandoned(self) -> None:
        """Temporary copies of builds that were killed mid-copy (we hold the lock: none is live)."""
        for stale in self.directory.iterdir():
            if TEMPORARY_NAME.fullmatch(stale.name) and not any(cleanup.leftovers(stale)):
                shutil.rmtree(stale, ignore_errors=True)

    def _evict(self) -> None:
        roots = sorted((path for path in self.directory.iterdir()
                        if ROOT_NAME.fullmatch(path.name) and path.is_dir()),
                       key=lambda path: path.stat().st_mtime, reverse=True)
        for old in roots[KEEP_ROOTS:]:
            shutil.rmtree(old, ignore_errors=True)


def prepare(invocation: kiwi.KiwiInvocation, staging: Staging, target: str, credentials: Credentials | None,
            kiwi_version: str, enabled: bool, on_phase: Callable[[str], None], secrets: list[str]) -> Decision:
    """Make ``invocation``'s image root ready, from the cache or freshly prepared; return what to build."""
    try:
        metadata = metadata_digests(invocation.repositories, credentials)
    except (OSError, urllib.error.URLError) as error:
        reason = (f"repository metadata unreadable ({error}): clean build" if enabled
                  else "--no-incremental: clean build")
        return Decision(False, reason, "", invocation, {})
    if not enabled:
        return Decision(False, "--no-incremental: clean build", "", invocation, metadata)
    description, image_root = staging.description, staging.image_root
    key = root_key(description, target, invocation, kiwi_version, metadata)
    cache = RootCache(invocation.cache_dir)
    with cache.locked():
        cached = cache.lookup(key)
        if cached is not None:
            on_phase("copy prepared root")
            _copy_tree(cached, image_root)
            reason = f"reused the prepared root {key[:12]}: packages, repositories and their metadata unchanged"
        else:
            reduced, root = staging.packages_description, staging.prepared_root
            _reduced_description(description, reduced)
            root.parent.mkdir()
            # target_dir is what kiwi.execute releases (mounts, loops) whatever happens: the root's parent
            prepare_invocation = dataclasses.replace(invocation, description=reduced, target_dir=root.parent,
                                              prepare_root=root, esp_fallback_dir=None)
            kiwi.execute(prepare_invocation, staging.prepare_log, lambda phase: on_phase(f"prepare root: {phase}"), secrets)
            on_phase("cache prepared root")
            cache.store(key, root)
            image_root.parent.mkdir(parents=True, exist_ok=True)
            os.rename(root, image_root)
            reason = (f"no prepared root for key {key[:12]} (first build, or packages, repositories or "
                      "their metadata changed): prepared one and cached it")
    _show_apt_what_is_installed(image_root)
    build_description = staging.incremental_description
    _without_bootstrap(description, build_description)
    return Decision(cached is not None, reason, key,
                    dataclasses.replace(invocation, description=build_description, allow_existing_root=True),
                    metadata)
