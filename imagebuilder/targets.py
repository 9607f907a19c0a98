"""The targets users build: which KIWI description and profile, and which repositories.

Step one of the flow (target -> composed description -> KIWI run -> artifacts -> validation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import InputError, RepositoryError
from .repos import DEBIAN_KEYRING, Repository, host_debian_mirrors

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DESCRIPTIONS_DIR = PROJECT_ROOT / "kiwi_descriptions"
OVERLAYS_DIR = PROJECT_ROOT / "overlays"

OPENSUSE_MIRROR = "https://download.opensuse.org"
SUSE_UPDATES = "https://updates.suse.com"


def _debian_repositories(mirror: str | None) -> list[Repository]:
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


def _leap_repositories(mirror: str | None) -> list[Repository]:
    base = (mirror or OPENSUSE_MIRROR).rstrip("/")
    paths = {
        "leap-oss": "distribution/leap/15.5/repo/oss",
        "leap-update-oss": "update/leap/15.5/oss",
        "leap-update-sle": "update/leap/15.5/sle",
        "leap-update-backports": "update/leap/15.5/backports",
    }
    return [Repository(alias=alias, url=f"{base}/{path}/", type="rpm-md")
            for alias, path in paths.items()]


def _sles_repositories(mirror: str | None) -> list[Repository]:
    # SCC and RMT/SMT share this layout (an RMT serves it below /repo).
    base = (mirror or SUSE_UPDATES).rstrip("/")
    repositories = []
    for product in ("SLE-Product-SLES", "SLE-Module-Basesystem", "SLE-Module-Server-Applications"):
        short = product.split("-", 2)[2].lower()
        repositories += [
            Repository(alias=f"{short}-pool", url=f"{base}/SUSE/Products/{product}/15-SP5/x86_64/product/",
                       type="rpm-md", authenticated=True),
            Repository(alias=f"{short}-updates", url=f"{base}/SUSE/Updates/{product}/15-SP5/x86_64/update/",
                       type="rpm-md", authenticated=True),
        ]
    return repositories


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    description: str  # directory below kiwi_descriptions/
    profile: str | None
    repositories: Callable[[str | None], list[Repository]]  # from the --mirror value
    package_manager: str  # KIWI's, as in the description: "apt" or "zypper"
    needs_credentials: bool = False

    @property
    def description_dir(self) -> Path:
        return DESCRIPTIONS_DIR / self.description


TARGETS = {
    target.name: target
    for target in (
        Target("debian", "Debian 12 (bookworm), kernel 6.12 from bookworm-security",
               "debian", None, _debian_repositories, "apt"),
        Target("leap", "openSUSE Leap 15.5", "suse", "Leap", _leap_repositories, "zypper"),
        Target("sles", "SUSE Linux Enterprise Server 15 SP5", "suse", "SLES", _sles_repositories, "zypper",
               needs_credentials=True),
    )
}

SHARED_OVERLAY = OVERLAYS_DIR / "tdx"


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise InputError(f"unknown target {name!r}", f"choose one of: {', '.join(TARGETS)}")
