"""The image's software bill of materials, from the packages themselves, in three documents:
SPDX 2.3 JSON (``<image>.spdx.json``), SPDX 3.0.1 JSON-LD (``<image>.spdx3.json``) and
CycloneDX 1.6 JSON (``<image>.cdx.json``).

Part of publishing (artifacts -> SBOM).  The package list is KIWI's ``<image>.packages``
(``name|epoch|version|release|arch|disturl|license`` per line, ``None`` where the package manager
has no such field: Debian fills name, version and arch).  For Debian images the maintainer
(supplier and creator), the source package and each package's copyright file (licence and
copyright, licences.py) come from KIWI's image root, which still holds the installed system when
publishing.  The package's own archive (``.deb``/``.rpm``, its file name and SHA-512) comes from
KIWI's package cache when the archive is still there.  What none of these holds is NOASSERTION.

Why three: SPDX 2.3 is what most consumers read today; the checks of BSI TR-03183-2 and of CISA's
2024 minimum (SBOM type, creator with contact) exist only in SPDX 3 terms
(``sbomcheck -s spdx3``); Dependency-Track and most scanners read CycloneDX.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from functools import cached_property
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packageurl import PackageURL

from .. import __version__
from ..core.errors import BuildError
from ..distros.targets import Target
from .licences import Licence, combined, read_package_copyright, read_rpm_tag

# purl (github.com/package-url/purl-spec) type and namespace of each target's packages.
PURL = {"debian": ("deb", "debian"), "leap": ("rpm", "opensuse"), "sles": ("rpm", "suse")}
DPKG_STATUS = "var/lib/dpkg/status"
# One relation of a Depends/Provides field: "libc6 (>= 2.34)", "awk", "python3:any" -> the name.
RELATION = re.compile(r"\s*([^\s(:\[<]+)")
ORGANIZATION = re.compile(r"team|maintainers|developers|project|group|debian", re.IGNORECASE)
# The build service a SUSE rpm's DISTURL names is its distributor's.
RPM_DISTRIBUTORS = {"build.suse.de": ("SUSE", "https://www.suse.com"),
                    "build.opensuse.org": ("openSUSE", "https://www.opensuse.org")}
# Where KIWI's apt and zypper keep downloaded archives below --cache-dir (kiwi/repository/).
ARCHIVE_DIRS = {"deb": "apt-get/archives", "rpm": "packages"}
TOOL = "tdx-image"
SUPPLIER = re.compile(r"(?P<name>[^<>]*\S)\s*<(?P<contact>[^<>\s]+@[^<>\s]+|https?://[^<>\s]+)>")
SPDX3_CONTEXT = "https://spdx.org/rdf/3.0.1/spdx-context.jsonld"
# BSI TR-03183-2's "structured" property (a file that holds other components: a disk image, a
# .deb or .rpm archive), in the SPDX 3 terms sbomcheck reads it from.
STRUCTURED = ["container"]
NO_ASSERTION_LICENCE = "https://spdx.org/rdf/3.0.1/terms/ExpandedLicensing/NoAssertionLicense"
SUFFIXES = {"spdx": ".spdx.json", "spdx3": ".spdx3.json", "cyclonedx": ".cdx.json"}


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


@dataclass(frozen=True)
class Supplier:
    name: str
    contact: str | None  # an e-mail address or a URL
    organization: bool

    @property
    def spdx2(self) -> str:
        kind = "Organization" if self.organization else "Person"
        return f"{kind}: {self.name} ({self.contact})" if self.contact else f"{kind}: {self.name}"


def parse_supplier(text: str) -> Supplier | None:
    """``--supplier``'s ``Name <e-mail or URL>`` (None: not in that form)."""
    match = SUPPLIER.fullmatch(text.strip())
    return Supplier(match["name"], match["contact"], organization=True) if match else None


@dataclass(frozen=True)
class Archive:
    """The file the package was distributed as, and its SHA-512 if the cache still held it."""

    name: str
    sha512: str | None


@dataclass(frozen=True)
class Component:
    """One installed package, with what the image and the package cache say about it."""

    package: Package
    purl: str
    supplier: Supplier | None
    source: str | None
    licence: Licence
    archive: Archive | None
    # The installed packages its Depends and Pre-Depends name (dpkg's record); None: unknown
    # (rpm: KIWI's list has no requirements).  complete: every relation has an installed package.
    depends: tuple[Package, ...] | None = None
    depends_complete: bool = False


@dataclass(frozen=True)
class Image:
    path: Path
    sha256: str
    target: Target
    supplier: Supplier | None  # who builds and supplies it (--supplier); also the SBOMs' author

    @cached_property
    def sha512(self) -> str:
        return _sha512(self.path)

    @property
    def version(self) -> str:  # KIWI's <version> of the chosen release, in the image's name
        return self.target.chosen.version

    @property
    def namespace(self) -> str:
        # Unique per image: the same image (by digest) always gets the same namespace.
        return f"https://spdx.org/spdxdocs/tdx-image-{uuid.uuid5(uuid.NAMESPACE_URL, self.sha256)}"


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


def supplier(maintainer: str | None) -> Supplier | None:
    """A supplier from dpkg's ``Name <email>``."""
    if not maintainer:
        return None
    match = re.fullmatch(r"(.*?)\s*<([^>]*)>", maintainer)
    name, email = (match.group(1), match.group(2)) if match else (maintainer, None)
    return Supplier(name, email or None, bool(ORGANIZATION.search(name)))


def rpm_supplier(disturl: str | None) -> Supplier | None:
    """The distributor whose build service built an rpm (its DISTURL's host)."""
    host = urlsplit(disturl or "").hostname
    if host in RPM_DISTRIBUTORS:
        name, url = RPM_DISTRIBUTORS[host]
        return Supplier(name, url, organization=True)
    return None


def _source_package(fields: dict[str, str], package: Package) -> tuple[str, str] | None:
    """The Debian source package (name, version) a binary was built from, per dpkg's record."""
    if "Source" in fields:  # "name" or "name (version)" when it differs from the binary's
        match = re.fullmatch(r"(\S+)(?:\s+\((.+)\))?", fields["Source"])
        if match:
            return match.group(1), match.group(2) or package.version
    if fields:  # a dpkg entry without Source: the source package has the binary's name
        return package.name, package.version
    return None


def _source(fields: dict[str, str], package: Package) -> str | None:
    source = _source_package(fields, package)
    if source:
        return f"built from source package {source[0]} {source[1]}"
    return f"built from {package.disturl}" if package.disturl else None


def _archive(package: Package, kind: str, cache_dir: Path | None) -> Archive | None:
    """The package's archive: its name as the distribution publishes it and, when KIWI's package
    cache still holds it, its SHA-512 (apt names cached files with the epoch as ``%3a``)."""
    if not package.arch:
        return None
    if kind == "deb":
        name = f"{package.name}_{package.version.split(':', 1)[-1]}_{package.arch}.deb"
        cached = f"{package.name}_{package.full_version.replace(':', '%3a')}_{package.arch}.deb"
    else:
        name = cached = f"{package.name}-{package.version}-{package.release}.{package.arch}.rpm"
    found = sorted((cache_dir / ARCHIVE_DIRS[kind]).rglob(cached)) if cache_dir else []
    return Archive(name, _sha512(found[0]) if found else None)


def components(packages: list[Package], target: Target, image_root: Path,
               cache_dir: Path | None) -> list[Component]:
    purl_type, namespace = PURL.get(target.name, ("generic", target.name))
    dpkg = read_dpkg_status(image_root / DPKG_STATUS) if purl_type == "deb" else {}
    records = {package: dpkg.get((package.name, package.arch or ""), {}) for package in packages}
    dependencies = _dependencies({p: fields for p, fields in records.items() if fields})
    sources = {package: _source_package(records[package], package) for package in packages}
    # Binaries of one source package share its copyright file: Debian Policy 12.5 lets a
    # binary's doc directory be a link to a sibling's, and the image's dpkg excludes such links.
    siblings: dict[tuple[str, str] | None, list[str]] = {}
    for package, source in sources.items():
        siblings.setdefault(source, []).append(package.name)
    result = []
    for package in packages:
        fields = records[package]
        if purl_type == "deb":
            who = supplier(fields.get("Maintainer"))
            licence = read_package_copyright(image_root, package.name,
                                             siblings[sources[package]] if sources[package] else [])
        else:
            who, licence = rpm_supplier(package.disturl), read_rpm_tag(package.license)
        purl = str(PackageURL(purl_type, namespace, package.name, package.full_version,
                              {"arch": package.arch} if package.arch else None))
        depends, complete = dependencies.get(package, (None, False))
        result.append(Component(package, purl, who, _source(fields, package), licence,
                                _archive(package, purl_type, cache_dir) if purl_type in ARCHIVE_DIRS else None,
                                depends, complete))
    return result


def _dependencies(records: dict[Package, dict[str, str]]
                  ) -> dict[Package, tuple[tuple[Package, ...], bool]]:
    """Each package's Pre-Depends and Depends as the installed packages that satisfy them (by
    name or Provides; the first installed alternative of ``a | b``), and whether all do.  dpkg
    installed them satisfied, so versions are not compared again."""
    by_name: dict[str, list[Package]] = {}
    for package, fields in records.items():
        for name in [package.name, *map(_related, filter(str.strip, fields.get("Provides", "").split(",")))]:
            by_name.setdefault(name, []).append(package)
    result = {}
    for package, fields in records.items():
        relations = ", ".join(filter(None, (fields.get("Pre-Depends"), fields.get("Depends"))))
        found, complete = [], True
        for relation in filter(str.strip, relations.split(",")):
            satisfying = [one for alternative in relation.split("|")
                          for one in by_name.get(_related(alternative), [])]
            found += satisfying[:1]
            complete = complete and bool(satisfying)
        result[package] = (tuple(dict.fromkeys(found)), complete)
    return result


def _related(relation: str) -> str:
    match = RELATION.match(relation)
    return match[1] if match else relation.strip()


def image_licence(parts: list[Component]) -> str | None:
    """The image holds its packages: all their licences apply, known only when each is."""
    expressions = [part.licence.expression for part in parts]
    return None if None in expressions else combined([e for e in expressions if e])


def _sha512(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha512").hexdigest()


def _created() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spdx_id(index: int, name: str) -> str:
    return f"SPDXRef-Package-{index}-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)


def _licence_comment(licence: Licence) -> str:
    return (f"concluded by {TOOL} from {licence.source}; no analysis of the sources"
            if licence.expression else f"no assertion: {licence.source}")


def spdx2(image: Image, parts: list[Component], created: str) -> dict:
    """The SPDX 2.3 document: the image (described) containing every package."""
    image_id = "SPDXRef-Image"
    texts: dict[str, str] = {}
    whole = image_licence(parts)
    packages = [{
        "SPDXID": image_id,
        "name": image.path.name,
        "versionInfo": image.version,
        "packageFileName": image.path.name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "checksums": [{"algorithm": "SHA256", "checksumValue": image.sha256},
                      {"algorithm": "SHA512", "checksumValue": image.sha512}],
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "supplier": image.supplier.spdx2 if image.supplier else "NOASSERTION",
        "description": image.target.title,
        "licenseConcluded": whole or "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "licenseComments": "the conjunction of the contained packages' concluded licences" if whole
                           else "no assertion: not every contained package's licence is known",
        # The image carries no notice of its own; its packages' notices are on each package.
        "copyrightText": "NONE",
    }]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    ids = {part.package: _spdx_id(index, part.package.name) for index, part in enumerate(parts, 1)}
    for part in parts:
        spdx_id = ids[part.package]
        texts.update(part.licence.texts)
        entry = {
            "SPDXID": spdx_id,
            "name": part.package.name,
            "versionInfo": part.package.full_version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "supplier": part.supplier.spdx2 if part.supplier else "NOASSERTION",
            "licenseConcluded": part.licence.expression or "NOASSERTION",
            "licenseDeclared": part.licence.expression or "NOASSERTION",
            "licenseComments": _licence_comment(part.licence),
            "copyrightText": part.licence.copyright or "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": part.purl}],
        }
        if part.archive:
            entry["packageFileName"] = part.archive.name
            if part.archive.sha512:
                entry["checksums"] = [{"algorithm": "SHA512", "checksumValue": part.archive.sha512}]
        if part.source:
            entry["sourceInfo"] = part.source
        if part.package.license:
            entry["comment"] = f"license as packaged: {part.package.license}"
        packages.append(entry)
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
        # "NONE": a package that depends on nothing (SPDX 2.3, section 11.1).
        relationships += [{"spdxElementId": spdx_id, "relationshipType": "DEPENDS_ON",
                           "relatedSpdxElement": ids[dependency]}
                          for dependency in part.depends or ()] or (
            [{"spdxElementId": spdx_id, "relationshipType": "DEPENDS_ON", "relatedSpdxElement": "NONE"}]
            if part.depends == () and part.depends_complete else [])
    document = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image.path.name} packages",
        "documentNamespace": image.namespace,
        "creationInfo": {"created": created,
                         "creators": ([image.supplier.spdx2] if image.supplier else [])
                         + [f"Tool: {TOOL}-{__version__}"]},
        "packages": packages,
        "relationships": relationships,
    }
    if texts:
        document["hasExtractedLicensingInfos"] = [
            {"licenseId": ref, "extractedText": text or "NOASSERTION",
             "name": ref.removeprefix("LicenseRef-")} for ref, text in sorted(texts.items())]
    return document


class _Graph:
    """SPDX 3 elements of one document, with IRIs below the document's namespace."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.elements: list[dict] = []
        self.agents: dict[Supplier, str] = {}
        self.count = 0

    def add(self, kind: str, *, local: str | None = None, **properties: Any) -> str:
        """An element; properties without a value are left out."""
        self.count += 1
        spdx_id = f"{self.namespace}#{local or f'{kind}-{self.count}'}"
        self.elements.append({"type": kind, "spdxId": spdx_id, "creationInfo": "_:creation",
                              **{key: value for key, value in properties.items() if value}})
        return spdx_id

    def agent(self, who: Supplier) -> str:
        if who not in self.agents:
            kind = "email" if "@" in (who.contact or "") else "urlScheme"
            self.agents[who] = self.add(
                "Organization" if who.organization else "Person", name=who.name,
                externalIdentifier=[{"type": "ExternalIdentifier", "externalIdentifierType": kind,
                                     "identifier": who.contact}] if who.contact else None)
        return self.agents[who]

    def relate(self, source: str, kind: str, targets: list[str], **properties: Any) -> None:
        self.add("Relationship", **{"from": source}, relationshipType=kind, to=targets,
                 **properties)

    def licence(self, source: str, kind: str, licence: str | None, texts: dict[str, str]) -> None:
        """hasConcludedLicense / hasDeclaredLicense to an expression (NoAssertionLicense when
        none); its LicenseRefs point at their texts."""
        if licence is None:
            self.relate(source, kind, [NO_ASSERTION_LICENCE])
            return
        refs = [{"type": "DictionaryEntry", "key": ref, "value": self.text(ref, texts[ref])}
                for ref in sorted(set(re.findall(r"LicenseRef-[A-Za-z0-9.-]+", licence)))
                if ref in texts]
        expression = self.add("simplelicensing_LicenseExpression",
                              simplelicensing_licenseExpression=licence,
                              simplelicensing_customIdToUri=refs)
        self.relate(source, kind, [expression])

    def text(self, ref: str, text: str) -> str:
        return self.add("simplelicensing_SimpleLicensingText", local=ref,
                        simplelicensing_licenseText=text or "NOASSERTION")


def spdx3(image: Image, parts: list[Component], created: str) -> dict:
    """The SPDX 3.0.1 document: an SBOM of type "build" whose root is the image, which contains
    (completely: KIWI lists every installed package) every package."""
    graph = _Graph(image.namespace)
    # Without --supplier the tool is the only author there is to name.
    creator = graph.agent(image.supplier) if image.supplier else graph.add("SoftwareAgent", name=TOOL)
    tool = graph.add("Tool", name=f"{TOOL}-{__version__}")
    texts: dict[str, str] = {}
    for part in parts:
        texts.update(part.licence.texts)
    image_id = graph.add(
        "software_Package", local="SPDXRef-Image", name=image.path.name,
        software_packageVersion=image.version, software_primaryPurpose="operatingSystem",
        software_copyrightText="NONE", description=image.target.title,
        suppliedBy=creator if image.supplier else None,
        originatedBy=[creator] if image.supplier else None)
    image_file = graph.add(
        "software_File", local="SPDXRef-Image-file", name=image.path.name,
        software_primaryPurpose="diskImage", software_additionalPurpose=STRUCTURED,
        verifiedUsing=[{"type": "Hash", "algorithm": "sha256", "hashValue": image.sha256},
                       {"type": "Hash", "algorithm": "sha512", "hashValue": image.sha512}])
    graph.relate(image_id, "hasDistributionArtifact", [image_file])
    graph.licence(image_id, "hasConcludedLicense", image_licence(parts), texts)
    ids = {part.package: f"{image.namespace}#{_spdx_id(index, part.package.name)}"
           for index, part in enumerate(parts, 1)}
    for part in parts:
        who = graph.agent(part.supplier) if part.supplier else None
        package = graph.add(
            "software_Package", local=ids[part.package].split("#")[1], name=part.package.name,
            software_packageVersion=part.package.full_version, software_packageUrl=part.purl,
            software_primaryPurpose="library",
            software_copyrightText=part.licence.copyright or "NOASSERTION",
            externalIdentifier=[{"type": "ExternalIdentifier",
                                 "externalIdentifierType": "packageUrl", "identifier": part.purl}],
            suppliedBy=who, originatedBy=[who] if who else None, software_sourceInfo=part.source,
            comment=_licence_comment(part.licence))
        graph.licence(package, "hasConcludedLicense", part.licence.expression, texts)
        if part.depends:
            graph.relate(package, "dependsOn", [ids[one] for one in part.depends],
                         completeness="complete" if part.depends_complete else "incomplete")
        graph.licence(package, "hasDeclaredLicense", part.licence.expression, texts)
        if part.archive:
            archive = graph.add("software_File", name=part.archive.name,
                                software_primaryPurpose="archive",
                                software_additionalPurpose=STRUCTURED,
                                verifiedUsing=[{"type": "Hash", "algorithm": "sha512",
                                                "hashValue": part.archive.sha512}]
                                if part.archive.sha512 else None)
            graph.relate(package, "hasDistributionArtifact", [archive])
    graph.relate(image_id, "contains", list(ids.values()), completeness="complete")
    sbom = f"{image.namespace}#SPDXRef-Sbom"
    elements = [element["spdxId"] for element in graph.elements]
    return {"@context": SPDX3_CONTEXT, "@graph": [
        {"type": "CreationInfo", "@id": "_:creation", "specVersion": "3.0.1", "created": created,
         "createdBy": [creator], "createdUsing": [tool]},
        *graph.elements,
        {"type": "software_Sbom", "spdxId": sbom, "creationInfo": "_:creation",
         "software_sbomType": ["build"], "rootElement": [image_id], "element": elements},
        {"type": "SpdxDocument", "spdxId": f"{image.namespace}#SPDXRef-DOCUMENT",
         "creationInfo": "_:creation", "name": f"{image.path.name} packages",
         "profileConformance": ["core", "software", "simpleLicensing"],
         "rootElement": [sbom], "element": [sbom, *elements]},
    ]}


def cyclonedx(image: Image, parts: list[Component]) -> str:
    """The CycloneDX 1.6 BOM (cyclonedx-python-lib): the image as the BOM's subject, depending
    on every package; the lifecycle phase "build"."""
    # Imported here: loading the library takes a quarter of a second every verb would pay.
    from cyclonedx.model import HashAlgorithm, HashType, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component as CdxComponent, ComponentType
    from cyclonedx.model.contact import OrganizationalContact, OrganizationalEntity
    from cyclonedx.model.license import LicenseAcknowledgement, LicenseExpression
    from cyclonedx.model.lifecycle import LifecyclePhase, PredefinedLifecycle
    from cyclonedx.output.json import JsonV1Dot6

    def entity(who: Supplier | None) -> OrganizationalEntity | None:
        if who is None:
            return None
        email = who.contact if who.contact and "@" in who.contact else None
        url = who.contact if who.contact and not email else None
        return OrganizationalEntity(name=who.name, urls=[XsUri(url)] if url else None,
                                    contacts=[OrganizationalContact(email=email)] if email else None)

    def licences(expression: str | None) -> list[LicenseExpression]:
        return [LicenseExpression(expression, acknowledgement=LicenseAcknowledgement.CONCLUDED)
                ] if expression else []

    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, image.sha256))
    bom.metadata.lifecycles = [PredefinedLifecycle(LifecyclePhase.BUILD)]
    bom.metadata.tools.components.add(CdxComponent(
        type=ComponentType.APPLICATION, name=TOOL, version=__version__))
    bom.metadata.supplier = entity(image.supplier)
    whole = image_licence(parts)
    subject = CdxComponent(
        type=ComponentType.OPERATING_SYSTEM, name=image.path.name, version=image.version,
        bom_ref="image", description=image.target.title, licenses=licences(whole),
        supplier=entity(image.supplier),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=image.sha256),
                HashType(alg=HashAlgorithm.SHA_512, content=image.sha512)])
    bom.metadata.component = subject
    components = {}
    for part in parts:
        components[part.package] = component = CdxComponent(
            type=ComponentType.LIBRARY, name=part.package.name,
            version=part.package.full_version, bom_ref=part.purl,
            purl=PackageURL.from_string(part.purl), supplier=entity(part.supplier),
            licenses=licences(part.licence.expression), copyright=part.licence.copyright,
            hashes=[HashType(alg=HashAlgorithm.SHA_512, content=part.archive.sha512)]
            if part.archive and part.archive.sha512 else None)
        bom.components.add(component)
        bom.register_dependency(subject, [component])
    for part in parts:
        if part.depends is not None:  # an empty list: depends on nothing
            bom.register_dependency(components[part.package],
                                    [components[one] for one in part.depends])
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"


def write(packages_file: Path, image: Image, image_root: Path,
          cache_dir: Path | None) -> dict[str, Path]:
    """Write the three SBOMs beside the package list; return their paths by format."""
    parts = components(read_packages(packages_file), image.target, image_root, cache_dir)
    created = _created()
    base = packages_file.with_suffix("")
    paths = {name: Path(f"{base}{suffix}") for name, suffix in SUFFIXES.items()}
    paths["spdx"].write_text(json.dumps(spdx2(image, parts, created), indent=2) + "\n")
    paths["spdx3"].write_text(json.dumps(spdx3(image, parts, created), indent=2) + "\n")
    paths["cyclonedx"].write_text(cyclonedx(image, parts))
    return paths
