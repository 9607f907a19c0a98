"""The targets users build: which KIWI description and profile, which releases, and for each
release which repositories, image version and container image.

Step one of the flow (target -> composed description -> KIWI run -> artifacts -> validation).
Releases are data: ``tdx-image build leap --release 15.6`` picks another row, never another
description.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.paths import DESCRIPTIONS_DIR
from ..core.errors import CredentialsError, InputError, RepositoryError
from .repos import DEBIAN_KEYRING, Repository, host_debian_mirrors, host_zypper_repositories

OPENSUSE_MIRROR = "https://download.opensuse.org"
# SUSE Customer Center's package host: it serves registered systems per-repository tokens, not
# SCC username/password (OSInside/kiwi#1959, #1678).
SCC_HOSTS = ("updates.suse.com", "scc.suse.com")
SLES_PRODUCTS = ("SLE-Product-SLES", "SLE-Module-Basesystem", "SLE-Module-Server-Applications")


@dataclass(frozen=True)
class Release:
    name: str  # as users write it after --release: "15.6", "15-SP6", "12"
    title: str
    version: str  # KIWI's <version> (x.y.z)
    container_image: str  # the distribution's own base image, for --container


def _debian_repositories(release: Release, mirror: str | None) -> list[Repository]:
    main: str | None
    security: str | None
    if mirror:
        main, security = mirror.rstrip("/"), mirror.rstrip("/") + "-security"
    else:
        host = host_debian_mirrors()
        main, security = host.get("bookworm"), host.get("bookworm-security")
        if not main or not security:
            raise RepositoryError(
                "the build host's apt configuration has no bookworm and bookworm-security sources",
                "give the Debian mirror with --mirror URL (its -security twin is used too)")

    def suite(url: str, name: str) -> Repository:
        return Repository(alias=name, url=url, type="apt-deb", distribution=name,
                          components="main", signing_keys=(DEBIAN_KEYRING,))

    return [suite(main, "bookworm"), suite(main, "bookworm-updates"),
            suite(security, "bookworm-security")]


def _leap_repositories(release: Release, mirror: str | None) -> list[Repository]:
    # download.opensuse.org's layout, as in OSInside/kiwi-descriptions suse-leap-15.5.
    base = (mirror or OPENSUSE_MIRROR).rstrip("/")
    paths = {
        "leap-oss": f"distribution/leap/{release.name}/repo/oss",
        "leap-update-oss": f"update/leap/{release.name}/oss",
        "leap-update-sle": f"update/leap/{release.name}/sle",
        "leap-update-backports": f"update/leap/{release.name}/backports",
    }
    return [Repository(alias=alias, url=f"{base}/{path}/", type="rpm-md")
            for alias, path in paths.items()]


def sles_mirror_repositories(release: Release, mirror: str) -> list[Repository]:
    """An RMT's or SMT's copy (``https://rmt.example.com/repo``) of SUSE's product layout."""
    if urllib.parse.urlsplit(mirror).hostname in SCC_HOSTS:
        raise CredentialsError(
            f"{mirror} does not take SCC username/password: SCC gives each registered system "
            "per-repository access tokens (OSInside/kiwi#1959)",
            "build on a SUSEConnect-registered SLES host, which uses its own repositories by "
            "default, or point --mirror at an RMT/SMT, e.g. https://rmt.example.com/repo")
    base = mirror.rstrip("/")
    repositories = []
    for product in SLES_PRODUCTS:
        short = product.split("-", 2)[2].lower()
        repositories += [
            Repository(alias=f"{short}-pool", type="rpm-md", authenticated=True,
                       url=f"{base}/SUSE/Products/{product}/{release.name}/x86_64/product/"),
            Repository(alias=f"{short}-updates", type="rpm-md", authenticated=True,
                       url=f"{base}/SUSE/Updates/{product}/{release.name}/x86_64/update/"),
        ]
    return repositories


def _sles_repositories(release: Release, mirror: str | None) -> list[Repository]:
    if mirror:
        return sles_mirror_repositories(release, mirror)
    # A registered SLES host's own repositories, with their tokens or credentials files.
    repositories, found = host_zypper_repositories(release.name)
    if not repositories:
        others = f" (it has {', '.join(found)})" if found else ""
        raise RepositoryError(
            f"this host has no registered SLES {release.name} repositories in "
            f"/etc/zypp/repos.d{others}",
            f"build on a SLES {release.name} host registered with SUSEConnect, or give an "
            "RMT/SMT: --mirror https://rmt.example.com/repo")
    return repositories


@dataclass(frozen=True)
class Target:
    name: str
    description: str  # directory below kiwi_descriptions/
    profile: str | None
    repository_source: Callable[[Release, str | None], list[Repository]]
    package_manager: str  # KIWI's, as in the description: "apt" or "zypper"
    releases: tuple[Release, ...]  # the first is the default
    release: Release | None = None  # the chosen one; None means the default
    # Where a dry run off a registered host points the layout for KIWI's offline checks.
    check_mirror: str | None = None

    @property
    def chosen(self) -> Release:
        return self.release or self.releases[0]

    @property
    def title(self) -> str:
        return self.chosen.title

    @property
    def image_name(self) -> str:
        return f"tdx-guest-{self.name}-{self.chosen.name}"

    @property
    def description_dir(self) -> Path:
        return DESCRIPTIONS_DIR / self.description

    def repositories(self, mirror: str | None) -> list[Repository]:
        """The chosen release's repositories, from ``--mirror`` or this target's default."""
        return self.repository_source(self.chosen, mirror)

    def with_release(self, name: str | None) -> Target:
        if name is None:
            return self
        for release in self.releases:
            if release.name == name:
                return replace(self, release=release)
        raise InputError(f"unknown release {name!r} for {self.name}",
                         f"known: {', '.join(release.name for release in self.releases)}")

    def apply_release(self, description: Path) -> None:
        """Write the chosen release's image name and version into a composed description."""
        config = description / "config.xml"
        text = config.read_text()
        text, names = re.subn(r'(<image\b[^>]*?\bname=")[^"]*"', rf'\g<1>{self.image_name}"',
                              text, count=1)
        text, versions = re.subn(r"<version>[^<]*</version>",
                                 f"<version>{self.chosen.version}</version>", text, count=1)
        if (names, versions) != (1, 1):
            raise InputError(f"{config} has no <image name=...> or no <version>")
        config.write_text(text)


LEAP_IMAGE = "registry.opensuse.org/opensuse/leap:{}"
SLE_BCI_IMAGE = "registry.suse.com/bci/bci-base:{}"
# Made on the build host by containers/make-debian-12-image (no registry needed).
DEBIAN_BUILDER_IMAGE = "localhost/tdx-image-debian:12"

TARGETS = {
    target.name: target
    for target in (
        Target("debian", "debian", None, _debian_repositories, "apt", (
            Release("12", "Debian 12 (bookworm), kernel 6.12 from bookworm-security", "12.0.0",
                    DEBIAN_BUILDER_IMAGE),
        )),
        Target("leap", "suse", "Leap", _leap_repositories, "zypper", tuple(
            Release(name, f"openSUSE Leap {name}", f"{name}.0", LEAP_IMAGE.format(name))
            for name in ("15.5", "15.6")
        )),
        Target("sles", "suse", "SLES", _sles_repositories, "zypper", tuple(
            Release(f"15-SP{sp}", f"SUSE Linux Enterprise Server 15 SP{sp}", f"15.{sp}.0",
                    SLE_BCI_IMAGE.format(f"15.{sp}"))
            for sp in (5, 6, 7)
        ), check_mirror="https://rmt.invalid/repo"),
    )
}



def get_target(name: str, release: str | None = None) -> Target:
    try:
        target = TARGETS[name]
    except KeyError:
        raise InputError(f"unknown target {name!r}", f"choose one of: {', '.join(TARGETS)}")
    return target.with_release(release)
