"""The SBOMs: KIWI's package list, the image's dpkg database and copyright files, and the package
cache's archives, as SPDX 2.3, SPDX 3.0.1 and CycloneDX 1.6 documents.  Each is checked with its
standard's own tooling: spdx-tools parses and validates SPDX 2.3; sbomcheck
(ntia-conformance-checker) judges NTIA, BSI TR-03183-2 and CISA 2024 conformance; the CycloneDX
schema validator of cyclonedx-python-lib validates the BOM."""

import hashlib
import json

import pytest
from ntia_conformance_checker.bsi_checker import BSIChecker
from ntia_conformance_checker.fsct_checker import FSCT3Checker
from ntia_conformance_checker.ntia_checker import NTIAChecker
from spdx_tools.spdx.model import RelationshipType
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from imagebuilder.build import licences, sbom
from imagebuilder.core.errors import BuildError
from imagebuilder.distros.targets import TARGETS
from tests.conftest import cyclonedx_errors

# Lines as KIWI 11.1 wrote them for the real debian image (dpkg-query: name|None|version|None|arch).
DEBIAN_PACKAGES = """\
adduser|None|3.134|None|all|None|None
libc6|None|2.36-9+deb12u13|None|amd64|None|None
linux-image-6.12.117+deb12-amd64|None|6.12.117-1~deb12u1|None|amd64|None|None
procps|None|2:4.0.2-3|None|amd64|None|None
"""
DPKG_STATUS = """\
Package: adduser
Status: install ok installed
Maintainer: Debian Adduser Developers <adduser@packages.debian.org>
Architecture: all
Version: 3.134
Depends: passwd
Description: add and remove users and groups
 This package includes the 'adduser' and 'deluser' commands.

Package: libc6
Status: install ok installed
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u13
Provides: libc-abi

Package: linux-image-6.12.117+deb12-amd64
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Source: linux-signed-6.12-amd64 (6.12.117+1~deb12u1)
Version: 6.12.117-1~deb12u1
Depends: libc-abi

Package: procps
Maintainer: Craig Small <csmall@debian.org>
Architecture: amd64
Version: 2:4.0.2-3
Pre-Depends: libc6 (>= 2.34)
Depends: init-system-helpers (>= 1.29~) | adduser:any, libc6 (>= 2.34)
"""
# Machine-readable copyright files (DEP-5), shortened from the real packages'.
ADDUSER_COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: adduser

Files: *
Copyright: 1997-1999 Guy Maor <maor@debian.org>
           2004-2022 Marc Haber <mh+debian-packages@zugschlus.de>
License: GPL-2+

Files: debian/po/*
Copyright: 2016 Afif Elghraoui
License: GPL-2+ or Artistic, and Expat

License: Artistic
 The "Artistic License"
 .
 Preamble
"""
LINUX_COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 1991-2012 Linus Torvalds and many others
License: GPL-2
"""
PROCPS_COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 1998-2023 Craig Small
License: GPL-2+-or-X11
 Permission is hereby granted ... (or the GNU GPL, version 2 or later)
"""
# libc6's in bookworm is prose, not DEP-5.
LIBC_COPYRIGHT = """\
This is the Debian prepackaged version of the GNU C Library version 2.36.

Copyright (C) 1991-2022 Free Software Foundation, Inc.

The GNU C Library is free software; you can redistribute it ... LGPL 2.1 or later.
"""
# rpm: name|epoch|version|release|arch|disturl|license
LEAP_PACKAGES = """\
kernel-default|(none)|5.14.21|150500.55.83.1|x86_64|obs://build.suse.de/SUSE:Maintenance:1/SUSE_SLE-15-SP5_Update/abc-kernel|GPL-2.0-only
glibc|None|2.31|150300.63.1|x86_64|obs://build.opensuse.org/openSUSE:Leap:15.5/standard/def-glibc|LGPL-2.1-or-later AND SUSE-LGPL-2.1+-with-GCC-exception AND GPL-2.0-or-later
gpg-pubkey|None|39db7c82|5f68629b|None|None|pubkey
"""
DIGEST = "ab" * 32
SUPPLIER = "Example Image Builders <images@example.org>"


@pytest.fixture
def image_root(tmp_path):
    """An image root with the dpkg database and copyright files (linux-image's doc directory a
    link into another, as Debian's kernel packages have it)."""
    root = tmp_path / "image-root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / sbom.DPKG_STATUS).write_text(DPKG_STATUS)
    docs = root / "usr/share/doc"
    for package, text in (("adduser", ADDUSER_COPYRIGHT), ("libc6", LIBC_COPYRIGHT),
                          ("linux-image-6.12", LINUX_COPYRIGHT), ("procps", PROCPS_COPYRIGHT)):
        (docs / package).mkdir(parents=True)
        (docs / package / "copyright").write_text(text)
    (docs / "linux-image-6.12.117+deb12-amd64").symlink_to("/usr/share/doc/linux-image-6.12")
    return root


@pytest.fixture
def cache(tmp_path):
    """KIWI's package cache with two of the archives apt fetched (the epoch as %3a)."""
    archives = tmp_path / "cache" / "apt-get" / "archives"
    archives.mkdir(parents=True)
    (archives / "adduser_3.134_all.deb").write_bytes(b"adduser archive")
    (archives / "procps_2%3a4.0.2-3_amd64.deb").write_bytes(b"procps archive")
    return tmp_path / "cache"


def write_sboms(tmp_path, packages: str, target: str, image_root, cache_dir=None,
                supplier: str | None = SUPPLIER) -> dict:
    packages_file = tmp_path / "img.x86_64-1.0.packages"
    packages_file.write_text(packages)
    image = tmp_path / "img.x86_64-1.0.qcow2"
    image.write_bytes(b"disk")
    return sbom.write(packages_file, sbom.Image(image, DIGEST, TARGETS[target],
                                                sbom.parse_supplier(supplier) if supplier else None),
                      image_root, cache_dir)


def parsed_and_valid(path):
    document = parse_file(str(path))
    assert validate_full_spdx_document(document) == []
    return document


def missing(checker) -> dict[str, list[str]]:
    """What a conformance checker found missing, by element, as component names."""
    return {element: sorted(name for name, _ in components)
            for element, components in checker.all_components_without_info}


def test_debian_packages_become_a_valid_spdx_document(tmp_path, image_root, cache):
    paths = write_sboms(tmp_path, DEBIAN_PACKAGES, "debian", image_root, cache)

    assert {name: path.name for name, path in paths.items()} == {
        "spdx": "img.x86_64-1.0.spdx.json", "spdx3": "img.x86_64-1.0.spdx3.json",
        "cyclonedx": "img.x86_64-1.0.cdx.json"}
    document = parsed_and_valid(paths["spdx"])
    assert document.creation_info.spdx_version == "SPDX-2.3"
    assert next(str(creator) for creator in document.creation_info.creators) == \
        "Organization: Example Image Builders (images@example.org)"
    packages = {p.name: p for p in document.packages}
    image = packages["img.x86_64-1.0.qcow2"]
    assert image.version == TARGETS["debian"].chosen.version  # KIWI's <version>, never missing
    assert {c.algorithm.name: c.value for c in image.checksums} == {
        "SHA256": DIGEST, "SHA512": hashlib.sha512(b"disk").hexdigest()}
    kernel = packages["linux-image-6.12.117+deb12-amd64"]
    assert kernel.version == "6.12.117-1~deb12u1"
    assert kernel.supplier.name == "Debian Kernel Team"
    assert kernel.supplier.email == "debian-kernel@lists.debian.org"
    assert kernel.source_info == "built from source package linux-signed-6.12-amd64 6.12.117+1~deb12u1"
    assert kernel.external_references[0].locator == \
        "pkg:deb/debian/linux-image-6.12.117%2Bdeb12-amd64@6.12.117-1~deb12u1?arch=amd64"
    assert str(kernel.license_concluded) == "GPL-2.0-only"  # through the doc directory's link
    assert kernel.copyright_text == "1991-2012 Linus Torvalds and many others"
    assert packages["libc6"].source_info == "built from source package glibc 2.36-9+deb12u13"
    assert packages["adduser"].source_info == "built from source package adduser 3.134"
    # The document describes the image, which contains every package.
    relations = {(r.relationship_type, str(r.related_spdx_element_id)) for r in document.relationships}
    assert (RelationshipType.DESCRIBES, "SPDXRef-Image") in relations
    assert sum(r.relationship_type == RelationshipType.CONTAINS for r in document.relationships) == 4


def test_dependencies_come_from_dpkgs_record(tmp_path, image_root):
    """Pre-Depends and Depends, satisfied by name, by Provides or by an alternative; a relation
    nothing installed satisfies makes the package's list incomplete."""
    paths = write_sboms(tmp_path, DEBIAN_PACKAGES, "debian", image_root)
    document = parsed_and_valid(paths["spdx"])
    names = {p.spdx_id: p.name for p in document.packages}
    depends = {(names[r.spdx_element_id], names.get(str(r.related_spdx_element_id), str(r.related_spdx_element_id)))
               for r in document.relationships if r.relationship_type == RelationshipType.DEPENDS_ON}
    assert depends == {("procps", "libc6"), ("procps", "adduser"),
                       ("linux-image-6.12.117+deb12-amd64", "libc6"),
                       ("libc6", "NONE")}  # adduser's passwd is not installed: nothing asserted
    graph = json.loads(paths["spdx3"].read_text())["@graph"]
    completeness = {element["from"].split("#")[1].split("-", 3)[-1]: element["completeness"]
                    for element in graph if element.get("relationshipType") == "dependsOn"}
    assert completeness == {"procps": "complete", "linux-image-6.12.117-deb12-amd64": "complete"}
    bom = json.loads(paths["cyclonedx"].read_text())
    cyclonedx = {d["ref"].split("/")[-1].split("@")[0]: len(d.get("dependsOn", []))
                 for d in bom["dependencies"] if d["ref"] != "image"}
    assert cyclonedx == {"procps": 2, "libc6": 0, "adduser": 0,
                         "linux-image-6.12.117%2Bdeb12-amd64": 1}


def test_licences_and_copyrights_come_from_the_packages_copyright_files(tmp_path, image_root):
    document = parsed_and_valid(write_sboms(tmp_path, DEBIAN_PACKAGES, "debian", image_root)["spdx"])
    packages = {p.name: p for p in document.packages}
    adduser = packages["adduser"]
    # DEP-5: a comma makes the "and" bind loosest; Expat is SPDX's MIT; Artistic (unversioned)
    # has no SPDX identifier: a LicenseRef with the text the copyright file gives for it.
    assert str(adduser.license_concluded) == \
        "GPL-2.0-or-later AND (GPL-2.0-or-later OR LicenseRef-Artistic-{}) AND MIT".format(
            hashlib.sha256(b'The "Artistic License"\n\nPreamble').hexdigest()[:8])
    assert adduser.license_declared == adduser.license_concluded
    assert adduser.copyright_text.splitlines() == [
        "1997-1999 Guy Maor <maor@debian.org>",
        "2004-2022 Marc Haber <mh+debian-packages@zugschlus.de>", "2016 Afif Elghraoui"]
    artistic = next(info for info in document.extracted_licensing_info
                    if info.license_id.startswith("LicenseRef-Artistic"))
    assert artistic.extracted_text == 'The "Artistic License"\n\nPreamble'
    # "GPL-2+-or-X11" is one name (no blanks around "or"), with its text in the Files paragraph.
    assert str(packages["procps"].license_concluded).startswith("LicenseRef-GPL-2-or-X11-")
    # Prose: the notices are read, the licence is not asserted, and the comment says why.
    libc = packages["libc6"]
    assert str(libc.license_concluded) == "NOASSERTION"
    assert libc.copyright_text == "Copyright (C) 1991-2022 Free Software Foundation, Inc."
    assert libc.license_comment == "no assertion: /usr/share/doc/libc6/copyright is not " \
                                   "machine-readable (DEP-5)"


def test_the_package_archives_are_named_and_hashed_when_the_cache_holds_them(tmp_path, image_root,
                                                                             cache):
    document = parsed_and_valid(write_sboms(tmp_path, DEBIAN_PACKAGES, "debian", image_root,
                                            cache)["spdx"])
    packages = {p.name: p for p in document.packages}
    assert packages["procps"].file_name == "procps_4.0.2-3_amd64.deb"  # the archive's own name
    assert packages["procps"].checksums[0].value == hashlib.sha512(b"procps archive").hexdigest()
    assert packages["libc6"].file_name == "libc6_2.36-9+deb12u13_amd64.deb"
    assert packages["libc6"].checksums == []  # not in the cache: no hash is claimed


def test_without_the_dpkg_database_suppliers_are_noassertion(tmp_path):
    document = parsed_and_valid(write_sboms(tmp_path, DEBIAN_PACKAGES, "debian",
                                            tmp_path / "empty-root", supplier=None)["spdx"])
    libc = next(p for p in document.packages if p.name == "libc6")
    assert str(libc.supplier) == "NOASSERTION" and libc.source_info is None
    assert str(libc.license_concluded) == str(libc.copyright_text) == "NOASSERTION"
    image = next(p for p in document.packages if p.spdx_id == "SPDXRef-Image")
    assert str(image.supplier) == "NOASSERTION"  # nobody said who supplies it (--supplier)
    assert [str(c) for c in document.creation_info.creators] == [f"Tool: tdx-image-{sbom.__version__}"]


def test_rpm_packages_keep_their_license_tag_and_distributor(tmp_path):
    archives = tmp_path / "cache" / "packages" / "repo-oss" / "x86_64"  # KIWI's zypper cache
    archives.mkdir(parents=True)
    (archives / "glibc-2.31-150300.63.1.x86_64.rpm").write_bytes(b"glibc rpm")
    paths = write_sboms(tmp_path, LEAP_PACKAGES, "leap", tmp_path / "image-root", tmp_path / "cache")

    document = parsed_and_valid(paths["spdx"])
    packages = {p.name: p for p in document.packages}
    kernel = packages["kernel-default"]
    assert kernel.version == "5.14.21-150500.55.83.1"
    assert kernel.source_info.startswith("built from obs://build.suse.de/")
    assert kernel.comment == "license as packaged: GPL-2.0-only"
    assert str(kernel.license_concluded) == "GPL-2.0-only"
    assert str(kernel.copyright_text) == "NOASSERTION"  # rpm headers carry no copyright notice
    assert str(kernel.supplier) == "Organization: SUSE (https://www.suse.com)"
    assert kernel.external_references[0].locator.startswith("pkg:rpm/opensuse/kernel-default@")
    glibc = packages["glibc"]
    assert str(glibc.license_concluded) == \
        "LGPL-2.1-or-later AND LicenseRef-SUSE-LGPL-2.1-with-GCC-exception AND GPL-2.0-or-later"
    assert str(glibc.supplier).startswith("Organization: openSUSE")
    assert glibc.file_name == "glibc-2.31-150300.63.1.x86_64.rpm"
    assert glibc.checksums[0].value == hashlib.sha512(b"glibc rpm").hexdigest()
    assert str(packages["gpg-pubkey"].supplier) == "NOASSERTION"
    # The same package data makes the other two documents.
    assert "LicenseRef-SUSE-LGPL-2.1-with-GCC-exception" in paths["spdx3"].read_text()
    assert cyclonedx_errors(paths["cyclonedx"].read_text()) is None


def test_the_documents_conform_where_the_packages_say_everything(tmp_path, image_root, cache):
    """Every package with a machine-readable copyright file and a cached archive: SPDX 2.3 meets
    NTIA; SPDX 3.0.1 meets NTIA, BSI TR-03183-2 and CISA 2024's minimum.  (SPDX 2.3 cannot meet
    the other two: the checker reads SBOM type and creator contacts in SPDX 3 terms only.)"""
    (cache / "apt-get/archives/linux-image-6.12.117+deb12-amd64_6.12.117-1~deb12u1_amd64.deb"
     ).write_bytes(b"kernel")
    known = "".join(line + "\n" for line in DEBIAN_PACKAGES.splitlines() if "libc6" not in line)
    paths = write_sboms(tmp_path, known, "debian", image_root, cache)

    assert NTIAChecker(str(paths["spdx"])).compliant
    for checker in (NTIAChecker(str(paths["spdx3"]), sbom_spec="spdx3"),
                    BSIChecker(str(paths["spdx3"])),
                    FSCT3Checker(str(paths["spdx3"]), sbom_spec="spdx3")):
        assert checker.validation_messages == [] and checker.parsing_errors == []
        assert checker.compliant, (type(checker).__name__, missing(checker), checker.table_elements)
    assert cyclonedx_errors(paths["cyclonedx"].read_text()) is None


def test_what_no_package_says_is_what_keeps_bsi_and_cisa_from_conforming(tmp_path, image_root):
    paths = write_sboms(tmp_path, DEBIAN_PACKAGES, "debian", image_root, supplier=None)

    assert NTIAChecker(str(paths["spdx3"]), sbom_spec="spdx3").compliant is False  # no supplier
    bsi = BSIChecker(str(paths["spdx3"]))
    assert not bsi.check_doc_creator()  # without --supplier nobody with a contact wrote it
    assert missing(bsi)["distribution_licenses"] == ["img.x86_64-1.0.qcow2", "libc6"]
    assert missing(bsi)["sha512_hash"] == sorted(  # no cache given: no archive hashes
        p.split("|")[0] for p in DEBIAN_PACKAGES.splitlines())
    cisa = FSCT3Checker(str(paths["spdx3"]), sbom_spec="spdx3")
    assert missing(cisa)["concluded_license"] == ["img.x86_64-1.0.qcow2", "libc6"]


def test_the_cyclonedx_bom_carries_the_same_package_data(tmp_path, image_root, cache):
    paths = write_sboms(tmp_path, DEBIAN_PACKAGES, "debian", image_root, cache)
    text = paths["cyclonedx"].read_text()

    assert cyclonedx_errors(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6" and bom["metadata"]["lifecycles"] == [{"phase": "build"}]
    assert bom["metadata"]["component"]["version"] == TARGETS["debian"].chosen.version
    assert bom["metadata"]["supplier"]["contact"] == [{"email": "images@example.org"}]
    components = {c["name"]: c for c in bom["components"]}
    kernel = components["linux-image-6.12.117+deb12-amd64"]
    assert kernel["purl"] == "pkg:deb/debian/linux-image-6.12.117%2Bdeb12-amd64@6.12.117-1~deb12u1?arch=amd64"
    assert kernel["licenses"] == [{"expression": "GPL-2.0-only", "acknowledgement": "concluded"}]
    assert kernel["supplier"]["name"] == "Debian Kernel Team"
    assert "licenses" not in components["libc6"]  # not asserted
    assert components["procps"]["hashes"] == [
        {"alg": "SHA-512", "content": hashlib.sha512(b"procps archive").hexdigest()}]
    image_dependencies = next(d for d in bom["dependencies"] if d["ref"] == "image")
    assert len(image_dependencies["dependsOn"]) == 4


def test_the_same_image_gets_the_same_namespace(tmp_path, image_root):
    namespaces = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        namespaces.append(json.loads(write_sboms(tmp_path / name, DEBIAN_PACKAGES, "debian",
                                                 image_root)["spdx"].read_text())["documentNamespace"])
    assert namespaces[0] == namespaces[1]


def test_a_malformed_package_list_is_a_build_error(tmp_path):
    with pytest.raises(BuildError, match="not a KIWI package line"):
        write_sboms(tmp_path, "adduser 3.134 all\n", "debian", tmp_path)


@pytest.mark.parametrize(("field", "expression"), [
    ("GPL-2+", "GPL-2.0-or-later"), ("GPL-2", "GPL-2.0-only"), ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("Expat", "MIT"), ("BSD-3-clause", "BSD-3-Clause"), ("GFDL-NIV-1.3+", "GFDL-1.3-no-invariants-or-later"),
    ("GPL-2+ or Artistic-2.0", "GPL-2.0-or-later OR Artistic-2.0"),
    ("GPL-1+ or Artistic-2.0, and MIT", "(GPL-1.0-or-later OR Artistic-2.0) AND MIT"),
    ("Apache-2.0 and MIT or ISC", "Apache-2.0 AND MIT OR ISC"),  # "and" binds tighter, as in SPDX
])
def test_dep5_licence_fields_become_spdx_expressions(field, expression):
    assert licences.expression(field, {}, {}) == expression


def test_a_symlink_in_the_image_never_leads_out_of_it(tmp_path):
    root = tmp_path / "root"
    (root / "usr/share/doc").mkdir(parents=True)
    (tmp_path / "host-secret").mkdir()
    (tmp_path / "host-secret" / "copyright").write_text("Format: copyright-format/1.0\n")
    (root / "usr/share/doc/evil").symlink_to("../../../../host-secret")
    assert licences.inside(root, "usr/share/doc/evil/copyright") is None


def test_a_package_whose_doc_link_dpkg_left_out_has_its_source_packages_copyright(tmp_path):
    """The image's dpkg keeps only /usr/share/doc/*/copyright: a doc directory that is a link to a
    sibling's (Debian Policy 12.5) is not installed; the sibling from the same source has it."""
    root = tmp_path / "image-root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / sbom.DPKG_STATUS).write_text(
        "Package: openssh-client\nArchitecture: amd64\nSource: openssh\nVersion: 1:9.2p1-2\n\n"
        "Package: openssh-server\nArchitecture: amd64\nSource: openssh\nVersion: 1:9.2p1-2\n\n"
        "Package: kmod\nArchitecture: amd64\nVersion: 30+20221128-1\n")
    (root / "usr/share/doc/openssh-client").mkdir(parents=True)
    (root / "usr/share/doc/openssh-client/copyright").write_text(LINUX_COPYRIGHT)
    packages = ("openssh-client|None|1:9.2p1-2|None|amd64|None|None\n"
                "openssh-server|None|1:9.2p1-2|None|amd64|None|None\n"
                "kmod|None|30+20221128-1|None|amd64|None|None\n")
    document = parsed_and_valid(write_sboms(tmp_path, packages, "debian", root)["spdx"])
    server, kmod = (next(p for p in document.packages if p.name == name)
                    for name in ("openssh-server", "kmod"))
    assert str(server.license_concluded) == "GPL-2.0-only"
    assert server.license_comment == (
        "concluded by tdx-image from /usr/share/doc/openssh-client/copyright, its source package's "
        "(/usr/share/doc/openssh-server/copyright is not in the image): DEP-5 License and Copyright "
        "fields; no analysis of the sources")
    assert str(kmod.license_concluded) == "NOASSERTION"  # no sibling has one either
    assert kmod.license_comment == ("no assertion: /usr/share/doc/kmod/copyright is not in the "
                                    "image, nor one of its source package's")
