"""The image's software bill of materials: an SPDX 2.3 JSON document of its packages.

Part of publishing (artifacts -> SBOM).  The package list is KIWI's ``<image>.packages``
(``name|epoch|version|release|arch|disturl|license`` per line, ``None`` where the package manager
has no such field: Debian fills name, version and arch).  For Debian images the maintainer (the
SPDX supplier) and the source package come from the image's own dpkg database, which KIWI's
image root still holds when publishing.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from .. import __version__
from ..core.errors import BuildError
from ..distros.targets import Target

# purl (github.com/package-url/purl-spec) type and namespace of each target's packages.
PURL = {"debian": ("deb", "debian"), "leap": ("rpm", "opensuse"), "sles": ("rpm", "suse")}
DPKG_STATUS = "var/lib/dpkg/status"
ORGANIZATION = re.compile(r"team|maintainers|developers|project|group|debian", re.IGNORECASE)


@dataclass(frozen=True)
class Package:
    name: str
    epoch: str | None
    version: str
    release: str | None
    arch: str | None  # rpm's gpg-pubkey entries have none
    disturl: str | None
    license: str | None

    @property
    def full_version(self) -> str:
        version = f"{self.version}-{self.release}" if self.release else self.version
        return f"{self.epoch}:{version}" if self.epoch else version


def read_packages(packages_file: Path) -> list[Package]:
    """KIWI's package list; ``None`` fields become None."""
    packages = []
    for number, line in enumerate(packages_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = [None if value in ("None", "(none)", "") else value for value in line.split("|")]
        if len(fields) == 7:
            name, epoch, version, release, arch, disturl, license_ = fields
            if name and version:
                packages.append(Package(name, epoch, version, release, arch, disturl, license_))
                continue
        raise BuildError(f"{packages_file}:{number}: not a KIWI package line: {line!r}")
    return packages


def read_dpkg_status(status: Path) -> dict[tuple[str, str], dict[str, str]]:
    """(package, architecture) -> its fields, from a dpkg status file (RFC 822 paragraphs)."""
    entries: dict[tuple[str, str], dict[str, str]] = {}
    try:
        text = status.read_text(errors="replace")
    except OSError:
        return entries
    for paragraph in text.split("\n\n"):
        fields, key = {}, None
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") and key:
                continue  # continuation lines (descriptions, conffiles) are not needed
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "Package" in fields:
            entries[(fields["Package"], fields.get("Architecture", ""))] = fields
    return entries


def supplier(maintainer: str | None) -> str:
    """SPDX's ``Person: name (email)`` / ``Organization: name (email)`` from ``Name <email>``."""
    if not maintainer:
        return "NOASSERTION"
    match = re.fullmatch(r"(.*?)\s*<([^>]*)>", maintainer)
    name, email = (match.group(1), match.group(2)) if match else (maintainer, "")
    kind = "Organization" if ORGANIZATION.search(name) else "Person"
    return f"{kind}: {name} ({email})" if email else f"{kind}: {name}"


def document(packages: list[Package], image: Path, image_sha256: str, target: Target,
             dpkg: dict[tuple[str, str], dict[str, str]]) -> dict:
    """The SPDX 2.3 document: the image (described) containing every package."""
    purl_type, namespace = PURL.get(target.name, ("generic", target.name))
    image_id = "SPDXRef-Image"
    spdx_packages = [{
        "SPDXID": image_id,
        "name": image.name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "checksums": [{"algorithm": "SHA256", "checksumValue": image_sha256}],
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "supplier": "Organization: tdx-image",
        "description": target.title,
    }]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    for index, package in enumerate(packages, 1):
        spdx_id = f"SPDXRef-Package-{index}-" + re.sub(r"[^A-Za-z0-9.-]", "-", package.name)
        fields = dpkg.get((package.name, package.arch or ""), {})
        entry = {
            "SPDXID": spdx_id,
            "name": package.name,
            "versionInfo": package.full_version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "supplier": supplier(fields.get("Maintainer")),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                "referenceLocator": f"pkg:{purl_type}/{namespace}/{quote(package.name, safe='')}"
                                    f"@{quote(package.full_version, safe='')}?arch={package.arch}",
            }],
        }
        source = _source(fields, package)
        if source:
            entry["sourceInfo"] = source
        if package.license:
            entry["comment"] = f"license as packaged: {package.license}"
        spdx_packages.append(entry)
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image.name} packages",
        # Unique per image: the same image (by digest) always gets the same namespace.
        "documentNamespace": "https://spdx.org/spdxdocs/tdx-image-"
                             f"{uuid.uuid5(uuid.NAMESPACE_URL, image_sha256)}",
        "creationInfo": {
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: tdx-image-{__version__}"],
        },
        "packages": spdx_packages,
        "relationships": relationships,
    }


def _source(fields: dict[str, str], package: Package) -> str | None:
    if "Source" in fields:  # "name" or "name (version)" when it differs from the binary's
        match = re.fullmatch(r"(\S+)(?:\s+\((.+)\))?", fields["Source"])
        if match:
            return f"built from source package {match.group(1)} {match.group(2) or package.version}"
    if fields:  # a dpkg entry without Source: the source package has the binary's name
        return f"built from source package {package.name} {package.version}"
    return f"built from {package.disturl}" if package.disturl else None


def write(packages_file: Path, image: Path, image_sha256: str, target: Target,
          image_root: Path) -> Path:
    """Write ``<image>.spdx.json`` beside the package list; return its path."""
    spdx = document(read_packages(packages_file), image, image_sha256, target,
                    read_dpkg_status(image_root / DPKG_STATUS))
    destination = packages_file.with_suffix(".spdx.json")
    destination.write_text(json.dumps(spdx, indent=2) + "\n")
    return destination
