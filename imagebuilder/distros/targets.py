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
from datetime import date
from pathlib import Path

from ..core.paths import DESCRIPTIONS_DIR
from ..core.errors import CredentialsError, InputError, RepositoryError
from .repos import (DEBIAN_KEYRING, Repository, host_debian_mirrors, host_zypper_repositories,
                    suse_signing_keys)

OPENSUSE_MIRROR = "https://download.opensuse.org"
# SUSE Customer Center's package host: it serves registered systems per-repository tokens, not
# SCC username/password (OSInside/kiwi#1959, #1678).
SCC_HOSTS = ("updates.suse.com", "scc.suse.com")
# SLE 15's repositories: the product and the two modules a server needs (SUSE/rmt's layout).
SLES_15_PRODUCTS = ("SLE-Product-SLES", "SLE-Module-Basesystem", "SLE-Module-Server-Applications")
# SLE 16 has no module repositories: one product repository holds the server's packages
# (os-autoinst/qem-bot openqabot/increment_approver.py diffs SLES 16.0 against
# SUSE/Products/SLE-Product-SLES/16.0/x86_64/product alone).
SLES_16_PRODUCTS = ("SLE-Product-SLES",)


@dataclass(frozen=True)
class Release:
    name: str  # as users write it after --release: "16.0", "15-SP6", "12"
    title: str
    version: str  # KIWI's <version> (x.y.z)
    container_image: str  # the distribution's own base image, for --container
    profile: str | None = None  # the description's KIWI profile for this release's packages
    # SUSE's major version (15, 16): its rpm database format decides which host builds it.
    generation: int | None = None
    # End of general support (SUSE's lifecycle pages): a build after it warns, naming what to
    # use instead.  None: supported, or no date known.
    supported_until: date | None = None
    successor: str = ""  # the release to name in that warning
    ltss: bool = False  # SLES: SUSE sells LTSS update repositories for it (--ltss)
    codename: str | None = None  # Debian's suite name
    # The root file systems its boot chain can build ("verity" needs a measured root hash on the
    # command line: the UKI chain), the default first.
    root_modes: tuple[str, ...] = ("writable",)

    @property
    def boots_uki(self) -> bool:
        """Its boot chain is the UKI made by the disk hook overlays/tdx/uki.sh, the chain that can
        seal the root."""
        return "verity" in self.root_modes

    def end_of_life_warning(self, today: date | None = None) -> str | None:
        """One line saying this release gets no more fixes, or None while it does."""
        if self.supported_until is None or (today or date.today()) <= self.supported_until:
            return None
        extra = (", unless you have LTSS (--ltss adds its update repository)"
                 if self.ltss else "")
        return (f"{self.title} reached the end of general support on "
                f"{self.supported_until.isoformat()}: it gets no more fixes{extra}; "
                f"build {self.successor} instead")


def _debian_repositories(release: Release, mirror: str | None, ltss: bool = False) -> list[Repository]:
    main: str | None
    security: str | None
    codename = release.codename or release.name
    if mirror:
        main, security = mirror.rstrip("/"), mirror.rstrip("/") + "-security"
    else:
        # A mirror serves every suite: the host's bookworm sources also carry trixie.
        host = host_debian_mirrors()
        main = host.get(codename) or host.get("bookworm")
        security = host.get(f"{codename}-security") or host.get("bookworm-security")
        if not main or not security:
            raise RepositoryError(
                "the build host's apt configuration has no Debian main and security sources",
                "give the Debian mirror with --mirror URL (its -security twin is used too)")

    def suite(url: str, name: str) -> Repository:
        return Repository(alias=name, url=url, type="apt-deb", distribution=name,
                          components="main", signing_keys=(DEBIAN_KEYRING,))

    return [suite(main, codename), suite(main, f"{codename}-updates"),
            suite(security, f"{codename}-security")]


def _leap_repositories(release: Release, mirror: str | None, ltss: bool = False) -> list[Repository]:
    base = (mirror or OPENSUSE_MIRROR).rstrip("/")
    if release.generation == 16:
        # One repository per architecture, updates published into it: openSUSE/openSUSE-repos
        # opensuse-leap16-repoindex.xml (repo-oss: /distribution/leap/%{distver}/repo/oss/$basearch;
        # no update/leap/16.0 tree, openSUSE/MirrorCache#652).
        paths = {"leap-oss": f"distribution/leap/{release.name}/repo/oss/x86_64"}
    else:
        # download.opensuse.org's layout, as in OSInside/kiwi-descriptions suse-leap-15.5.
        paths = {
            "leap-oss": f"distribution/leap/{release.name}/repo/oss",
            "leap-update-oss": f"update/leap/{release.name}/oss",
            "leap-update-sle": f"update/leap/{release.name}/sle",
            "leap-update-backports": f"update/leap/{release.name}/backports",
        }
    return [Repository(alias=alias, url=f"{base}/{path}/", type="rpm-md")
            for alias, path in paths.items()]


def sles_mirror_repositories(release: Release, mirror: str, ltss: bool = False) -> list[Repository]:
    """An RMT's or SMT's copy (``https://rmt.example.com/repo``) of SUSE's product layout."""
    if urllib.parse.urlsplit(mirror).hostname in SCC_HOSTS:
        raise CredentialsError(
            f"{mirror} does not take SCC username/password: SCC gives each registered system "
            "per-repository access tokens (OSInside/kiwi#1959)",
            "build on a SUSEConnect-registered SLES host, which uses its own repositories by "
            "default, or point --mirror at an RMT/SMT, e.g. https://rmt.example.com/repo")
    base = mirror.rstrip("/")
    products = SLES_16_PRODUCTS if release.generation == 16 else SLES_15_PRODUCTS
    repositories = []
    for product in products:
        short = product.split("-", 2)[2].lower()
        repositories += [
            Repository(alias=f"{short}-pool", type="rpm-md", authenticated=True,
                       url=f"{base}/SUSE/Products/{product}/{release.name}/x86_64/product/"),
            Repository(alias=f"{short}-updates", type="rpm-md", authenticated=True,
                       url=f"{base}/SUSE/Updates/{product}/{release.name}/x86_64/update/"),
        ]
    if ltss:
        # LTSS is an extension of the SLES product with one update repository (SUSE/rmt's
        # layout, as SUSEConnect registers SLES-LTSS/15.x/x86_64).
        repositories.append(Repository(
            alias="sles-ltss-updates", type="rpm-md", authenticated=True,
            url=f"{base}/SUSE/Updates/SLE-Product-SLES/{release.name}-LTSS/x86_64/update/"))
    return repositories


def _sles_repositories(release: Release, mirror: str | None, ltss: bool = False) -> list[Repository]:
    if mirror:
        return sles_mirror_repositories(release, mirror, ltss)
    # A registered SLES host's own repositories, with their tokens or credentials files.
    repositories, found = host_zypper_repositories(release.name, ltss=ltss)
    if not repositories:
        others = f" (it has {', '.join(found)})" if found else ""
        raise RepositoryError(
            f"this host has no registered SLES {release.name} repositories in "
            f"/etc/zypp/repos.d{others}",
            f"build on a SLES {release.name} host registered with SUSEConnect, or give an "
            "RMT/SMT: --mirror https://rmt.example.com/repo")
    if ltss and not any("-LTSS/" in repo.url for repo in repositories):
        raise RepositoryError(
            f"--ltss: this host has no registered SLES {release.name} LTSS repository",
            f"register the extension (SUSEConnect -p SLES-LTSS/{release.version.rsplit('.', 1)[0]}"
            "/x86_64 -r CODE), or give an RMT that mirrors it with --mirror")
    return repositories


@dataclass(frozen=True)
class Target:
    name: str
    description: str  # directory below kiwi_descriptions/
    repository_source: Callable[[Release, str | None, bool], list[Repository]]
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
    def profile(self) -> str | None:
        return self.chosen.profile

    @property
    def image_name(self) -> str:
        return f"tdx-guest-{self.name}-{self.chosen.name}"

    @property
    def description_dir(self) -> Path:
        return DESCRIPTIONS_DIR / self.description

    def repositories(self, mirror: str | None, ltss: bool = False) -> list[Repository]:
        """The chosen release's repositories, from ``--mirror`` or this target's default, with
        its LTSS update repository if asked for."""
        if ltss and not self.chosen.ltss:
            with_ltss = [release.name for release in self.releases if release.ltss]
            raise InputError(f"--ltss: {self.title} has no LTSS repositories",
                             f"LTSS exists for {self.name} {', '.join(with_ltss)}" if with_ltss
                             else "only SLES 15 service packs have LTSS")
        repositories = self.repository_source(self.chosen, mirror, ltss)
        if self.package_manager == "zypper":
            keys = suse_signing_keys()
            repositories = [replace(repo, signing_keys=keys) for repo in repositories]
        return repositories

    def with_release(self, name: str | None) -> Target:
        if name is None:
            return self
        for release in self.releases:
            if release.name == name:
                return replace(self, release=release)
        raise InputError(f"unknown release {name!r} for {self.name}",
                         f"known: {', '.join(release.name for release in self.releases)}")

    def root_mode(self, requested: str | None) -> str:
        """``--root`` for the chosen release: the one requested if its boot chain can build it,
        else its default."""
        modes = self.chosen.root_modes
        if requested is None:
            return modes[0]
        if requested not in modes:
            with_verity = [f"{target.name} {release.name}" for target in TARGETS.values()
                           for release in target.releases if requested in release.root_modes]
            raise InputError(f"--root {requested} is not available for {self.name} {self.chosen.name}: "
                             f"its boot chain has {', '.join(modes)}",
                             f"--root {requested} is built for: {', '.join(with_verity)}")
        return requested

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
# SLES builds in the Leap container of its generation, not in SLE BCI (registry.suse.com/bci/
# bci-base): an unregistered BCI container sees only the SLE_BCI repository, which is not shown
# to hold the disk tools KIWI needs; Leap's repositories have them, and Leap 15.6 / 16.0 carry
# the rpm of SLES 15 / 16, which is what KIWI needs from the build host.
SLES_BUILDER_15, SLES_BUILDER_16 = LEAP_IMAGE.format("15.6"), LEAP_IMAGE.format("16.0")
# Made on the build host by containers/make-debian-12-image (no registry needed).
DEBIAN_BUILDER_IMAGE = "localhost/tdx-image-debian:12"

# End of general support, from SUSE's lifecycle pages (https://www.suse.com/lifecycle,
# https://en.opensuse.org/Lifetime): Leap 15.5 ended 2024-12-31; Leap 15.6 was extended to
# 2026-04-30; SLES 15 SP5 general support ended 2024-12-31 and SP6 2025-12-31 (LTSS three
# years more: https://www.suse.com/c/sles-15-sp6-ltss-2026-support-gap).  15 SP7 is the last
# SLE 15 service pack and still in general support.
# The UKI chain's (debian 13, SUSE 16: overlays/tdx/uki.sh) roots: sealed by default, or writable.
UKI_ROOT_MODES = ("verity", "writable")
LEAP_RELEASES = (
    Release("16.0", "openSUSE Leap 16.0", "16.0.0", LEAP_IMAGE.format("16.0"), "Leap16", 16,
            root_modes=UKI_ROOT_MODES),
    Release("15.6", "openSUSE Leap 15.6", "15.6.0", LEAP_IMAGE.format("15.6"), "Leap15", 15,
            date(2026, 4, 30), "leap --release 16.0"),
    Release("15.5", "openSUSE Leap 15.5", "15.5.0", LEAP_IMAGE.format("15.5"), "Leap15", 15,
            date(2024, 12, 31), "leap --release 16.0"),
)
SLES_RELEASES = (
    Release("16.0", "SUSE Linux Enterprise Server 16.0", "16.0.0", SLES_BUILDER_16,
            "SLES16", 16, root_modes=UKI_ROOT_MODES),
    Release("15-SP7", "SUSE Linux Enterprise Server 15 SP7", "15.7.0",
            SLES_BUILDER_15, "SLES15", 15),
    Release("15-SP6", "SUSE Linux Enterprise Server 15 SP6", "15.6.0",
            SLES_BUILDER_15, "SLES15", 15, date(2025, 12, 31),
            "sles --release 16.0 (or 15-SP7)", ltss=True),
    Release("15-SP5", "SUSE Linux Enterprise Server 15 SP5", "15.5.0",
            SLES_BUILDER_15, "SLES15", 15, date(2024, 12, 31),
            "sles --release 16.0 (or 15-SP7)", ltss=True),
)

TARGETS = {
    target.name: target
    for target in (
        Target("debian", "debian", _debian_repositories, "apt", (
            Release("13", "Debian 13 (trixie), kernel 6.12, a UKI started by systemd-stub",
                    "13.0.0", DEBIAN_BUILDER_IMAGE, codename="trixie", profile="trixie",
                    root_modes=UKI_ROOT_MODES),
            Release("12", "Debian 12 (bookworm), kernel 6.12 from bookworm-security", "12.0.0",
                    DEBIAN_BUILDER_IMAGE, codename="bookworm", profile="bookworm"),
        )),
        Target("leap", "suse", _leap_repositories, "zypper", LEAP_RELEASES),
        Target("sles", "suse", _sles_repositories, "zypper", SLES_RELEASES,
               check_mirror="https://rmt.invalid/repo"),
    )
}


def get_target(name: str, release: str | None = None) -> Target:
    try:
        target = TARGETS[name]
    except KeyError:
        raise InputError(f"unknown target {name!r}", f"choose one of: {', '.join(TARGETS)}")
    return target.with_release(release)
