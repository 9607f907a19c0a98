"""The SBOM: KIWI's package list (and the image's dpkg database) as an SPDX 2.3 JSON document,
parsed and validated with spdx-tools (the SPDX project's own Python library)."""

import json

import pytest
from spdx_tools.spdx.model import RelationshipType
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from imagebuilder.build import sbom
from imagebuilder.core.errors import BuildError
from imagebuilder.distros.targets import TARGETS

# Lines as KIWI 11.1 wrote them for the real debian image (dpkg-query: name|None|version|None|arch).
DEBIAN_PACKAGES = """\
adduser|None|3.134|None|all|None|None
libc6|None|2.36-9+deb12u13|None|amd64|None|None
linux-image-6.12.117+deb12-amd64|None|6.12.117-1~deb12u1|None|amd64|None|None
"""
DPKG_STATUS = """\
Package: adduser
Status: install ok installed
Maintainer: Debian Adduser Developers <adduser@packages.debian.org>
Architecture: all
Version: 3.134
Description: add and remove users and groups
 This package includes the 'adduser' and 'deluser' commands.

Package: libc6
Status: install ok installed
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u13

Package: linux-image-6.12.117+deb12-amd64
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Source: linux-signed-6.12-amd64 (6.12.117+1~deb12u1)
Version: 6.12.117-1~deb12u1
"""
# rpm: name|epoch|version|release|arch|disturl|license
LEAP_PACKAGES = """\
kernel-default|(none)|5.14.21|150500.55.83.1|x86_64|obs://build.suse.de/SUSE:Maintenance:1/SUSE_SLE-15-SP5_Update/abc-kernel|GPL-2.0-only
glibc|None|2.31|150300.63.1|x86_64|None|LGPL-2.1-or-later AND SUSE-LGPL-2.1+-with-GCC-exception AND GPL-2.0-or-later
"""
DIGEST = "ab" * 32


def write_sbom(tmp_path, packages: str, target: str, status: str | None = None):
    packages_file = tmp_path / "img.x86_64-1.0.packages"
    packages_file.write_text(packages)
    root = tmp_path / "image-root"
    if status is not None:
        (root / "var/lib/dpkg").mkdir(parents=True)
        (root / sbom.DPKG_STATUS).write_text(status)
    return sbom.write(packages_file, tmp_path / "img.x86_64-1.0.qcow2", DIGEST, TARGETS[target], root)


def parsed_and_valid(path):
    document = parse_file(str(path))
    assert validate_full_spdx_document(document) == []
    return document


def test_debian_packages_become_a_valid_spdx_document(tmp_path):
    path = write_sbom(tmp_path, DEBIAN_PACKAGES, "debian", DPKG_STATUS)

    assert path.name == "img.x86_64-1.0.spdx.json"
    document = parsed_and_valid(path)
    assert document.creation_info.spdx_version == "SPDX-2.3"
    packages = {p.name: p for p in document.packages}
    assert packages["img.x86_64-1.0.qcow2"].checksums[0].value == DIGEST
    kernel = packages["linux-image-6.12.117+deb12-amd64"]
    assert kernel.version == "6.12.117-1~deb12u1"
    assert kernel.supplier.name == "Debian Kernel Team"
    assert kernel.supplier.email == "debian-kernel@lists.debian.org"
    assert kernel.source_info == "built from source package linux-signed-6.12-amd64 6.12.117+1~deb12u1"
    assert kernel.external_references[0].locator == \
        "pkg:deb/debian/linux-image-6.12.117%2Bdeb12-amd64@6.12.117-1~deb12u1?arch=amd64"
    assert packages["libc6"].source_info == "built from source package glibc 2.36-9+deb12u13"
    assert packages["adduser"].source_info == "built from source package adduser 3.134"
    # The document describes the image, which contains every package.
    relations = {(r.relationship_type, r.related_spdx_element_id) for r in document.relationships}
    assert (RelationshipType.DESCRIBES, "SPDXRef-Image") in relations
    assert sum(r.relationship_type == RelationshipType.CONTAINS for r in document.relationships) == 3


def test_without_the_dpkg_database_suppliers_are_noassertion(tmp_path):
    document = parsed_and_valid(write_sbom(tmp_path, DEBIAN_PACKAGES, "debian"))
    libc = next(p for p in document.packages if p.name == "libc6")
    assert str(libc.supplier) == "NOASSERTION" and libc.source_info is None


def test_rpm_packages_keep_epoch_release_disturl_and_license(tmp_path):
    document = parsed_and_valid(write_sbom(tmp_path, LEAP_PACKAGES, "leap"))
    kernel = next(p for p in document.packages if p.name == "kernel-default")
    assert kernel.version == "5.14.21-150500.55.83.1"
    assert kernel.source_info.startswith("built from obs://build.suse.de/")
    assert kernel.comment == "license as packaged: GPL-2.0-only"
    assert kernel.external_references[0].locator.startswith("pkg:rpm/opensuse/kernel-default@")


def test_the_same_image_gets_the_same_namespace(tmp_path):
    namespaces = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        namespaces.append(json.loads(write_sbom(tmp_path / name, DEBIAN_PACKAGES, "debian")
                                     .read_text())["documentNamespace"])
    assert namespaces[0] == namespaces[1]


def test_a_malformed_package_list_is_a_build_error(tmp_path):
    with pytest.raises(BuildError, match="not a KIWI package line"):
        write_sbom(tmp_path, "adduser 3.134 all\n", "debian")
