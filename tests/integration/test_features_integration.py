"""What users customise and get, on the real debian build of this run (made with `--package jq`
and a config file authorizing an SSH key for user `tester` and naming the supplier): the SBOMs
and their conformance, the build provenance, the build record, `run`
with SSH forwarded into the image, `boot` on a terminal with an explicit firmware, and the
validator on the image converted to vmdk."""

import hashlib
import json
import socket
import subprocess
import time

import re
from contextlib import closing

import pytest

from imagebuilder.build import provenance
from imagebuilder.host import virt
from imagebuilder.image.disk import open_disk
from imagebuilder.image.inspection import Inspection

from ..conftest import (TDX_IMAGE, TEST_SUPPLIER, cyclonedx_errors, run_cli, run_cli_on_terminal,
                        sbom_conformance)

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 600  # software emulation on a loaded 2-core machine


def test_the_build_publishes_a_valid_spdx_sbom_of_its_packages(debian_build, debian_image):
    # Imported here: the SBOM validators take seconds to import, which every fast run's
    # collection of this module would pay.
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    record = json.loads((debian_build / "build.json").read_text())
    sbom_file = debian_build / record["sbom"]["file"]
    assert hashlib.sha256(sbom_file.read_bytes()).hexdigest() == record["sbom"]["sha256"]
    assert record["artifacts"][sbom_file.name]["sha256"] == record["sbom"]["sha256"]

    document = parse_file(str(sbom_file))
    assert validate_full_spdx_document(document) == []
    assert document.creation_info.spdx_version == "SPDX-2.3"
    listed = [line.split("|") for line in next(debian_build.glob("*.packages")).read_text().splitlines()]
    packages = {p.name: p for p in document.packages}
    assert len(document.packages) == len(listed) + 1  # every package, and the image
    assert packages[debian_image.name].checksums[0].value == record["artifacts"][debian_image.name]["sha256"]
    for name, _, version, _, _, _, _ in listed:
        assert packages[name].version == version
    kernel = next(p for name, p in packages.items() if name.startswith("linux-image-6.12."))
    assert kernel.supplier.name == "Debian Kernel Team"  # from the image's dpkg database
    assert kernel.source_info.startswith("built from source package linux-signed-6.12-amd64 ")
    assert "jq" in packages  # --package jq


def test_the_sboms_conform_but_where_the_image_holds_no_machine_readable_licence(debian_build,
                                                                                debian_image):
    """NTIA on both SPDX documents; BSI TR-03183-2 and CISA 2024's minimum miss only licences, and
    only of the image and of packages whose copyright file in the image is prose (read back from
    the image itself)."""
    record = json.loads((debian_build / "build.json").read_text())
    findings = sbom_conformance(debian_build, record)

    assert findings["ntia (SPDX 2.3)"]["unmet"] == findings["ntia"]["unmet"] == []
    assert set(findings["bsi"]["unmet"]) <= {"Distribution Licenses"}
    assert set(findings["fsct3-min"]["unmet"]) <= {"All component concluded license provided?"}
    unlicensed = set(findings["bsi"].get("distribution_licenses", []))
    assert unlicensed == set(findings["fsct3-min"].get("concluded_license", []))
    spdx = json.loads((debian_build / record["sbom"]["file"]).read_text())
    comments = {package["name"]: package["licenseComments"] for package in spdx["packages"]}
    assert comments[debian_image.name] == "no assertion: not every contained package's licence is known"
    with closing(open_disk(debian_image)) as disk:
        root = Inspection(disk).root
        for name in unlicensed - {debian_image.name}:
            reason = re.fullmatch(r"no assertion: (/usr/share/doc/[^/]+/copyright).* is not "
                                  r"machine-readable \(DEP-5\)", comments[name])
            assert reason, (name, comments[name])
            text = root.read(reason.group(1))
            assert text and not text.startswith(b"Format:"), name
    image = next(p for p in spdx["packages"] if p["SPDXID"] == "SPDXRef-Image")
    assert image["supplier"] == spdx["creationInfo"]["creators"][0] == \
        f"Organization: {TEST_SUPPLIER.replace('<', '(').replace('>', ')')}"

    cyclonedx = (debian_build / record["sbom_cyclonedx"]["file"]).read_text()
    assert cyclonedx_errors(cyclonedx) is None
    assert len(json.loads(cyclonedx)["components"]) == len(spdx["packages"]) - 1
    # dpkg installed every dependency: each package's list is complete (jq needs libjq1).
    graph = json.loads((debian_build / record["sbom_spdx3"]["file"]).read_text())["@graph"]
    depends = [element for element in graph if element.get("relationshipType") == "dependsOn"]
    assert depends and {element["completeness"] for element in depends} == {"complete"}
    ids = {p["SPDXID"]: p["name"] for p in spdx["packages"]}
    assert ("jq", "libjq1") in {(ids[r["spdxElementId"]], ids.get(r["relatedSpdxElement"]))
                                for r in spdx["relationships"] if r["relationshipType"] == "DEPENDS_ON"}


def test_the_provenance_names_the_published_image_and_what_made_it(debian_build, debian_image):
    record = json.loads((debian_build / "build.json").read_text())
    statement_file = debian_build / record["provenance"]["file"]
    assert hashlib.sha256(statement_file.read_bytes()).hexdigest() == record["provenance"]["sha256"]
    statement = json.loads(statement_file.read_text())

    checksum = (debian_build / f"{debian_image.name}.sha256").read_text().split()
    assert statement["subject"] == [{"name": checksum[1], "digest": {"sha256": checksum[0]}}]
    assert checksum[0] == hashlib.sha256(debian_image.read_bytes()).hexdigest()
    definition = statement["predicate"]["buildDefinition"]
    assert definition["buildType"] == provenance.BUILD_TYPE
    assert definition["externalParameters"]["packages"] == ["jq"]
    repositories = [entry for entry in definition["resolvedDependencies"] if "annotations" in entry]
    assert [entry["uri"] for entry in repositories] == [r["url"] for r in record["inputs"]["repositories"]]
    assert all(len(entry["digest"]["sha256"]) == 64 for entry in repositories)  # metadata read
    kiwi = next(entry for entry in definition["resolvedDependencies"] if entry["name"] == "kiwi")
    assert kiwi["uri"] == f"pkg:generic/kiwi@{record['tools']['kiwi']}"
    byproducts = {entry["name"]: entry["digest"]["sha256"]
                  for entry in statement["predicate"]["runDetails"]["byproducts"]}
    assert byproducts == {record[key]["file"]: record[key]["sha256"]
                          for key in ("sbom", "sbom_spdx3", "sbom_cyclonedx")}


def test_the_build_record_keeps_the_customisation(debian_build):
    inputs = json.loads((debian_build / "build.json").read_text())["inputs"]
    assert inputs["packages"] == ["jq"]
    assert inputs["ssh_user"] == "tester" and inputs["ssh_key"].endswith("ssh/id_ed25519.pub")
    assert inputs["image_format"] is None and inputs["size_mib"] is None  # the description's


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_run_forwards_ssh_to_the_named_user_and_never_writes_the_image(debian_image, debian_ssh_key,
                                                                       tmp_path):
    digest_before = hashlib.sha256(debian_image.read_bytes()).hexdigest()
    port = free_port()
    console = tmp_path / "console"
    with open(console, "wb") as sink:
        qemu = subprocess.Popen([*TDX_IMAGE, "run", debian_image, "--exec", "--accel", "tcg",
                                 "--ssh-port", str(port), "--memory", "1536", "--cpus", "1",
                                 "--firmware", virt.OVMF_CODE],
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    ssh = ["ssh", "-i", debian_ssh_key, "-p", str(port), "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "ConnectTimeout=10", "tester@127.0.0.1",
           "id -un; nproc; grep MemTotal /proc/meminfo; jq --version"]
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            result = subprocess.run(ssh, capture_output=True, text=True, timeout=60)
            if result.returncode == 0 or time.monotonic() > deadline or qemu.poll() is not None:
                break
            if "Permission denied" in result.stderr:  # sshd is up and refused the key: final
                break
            time.sleep(5)
    finally:
        qemu.terminate()  # `run --exec` became QEMU: this is the QEMU we started
        qemu.wait(30)
    assert result.returncode == 0, f"{result.stderr}\n{console.read_text(errors='replace')[-2000:]}"
    user, cpus, memory, jq = result.stdout.splitlines()
    assert (user, cpus) == ("tester", "1")
    assert 1_300_000 < int(memory.split()[1]) <= 1536 * 1024  # kB: --memory 1536 less the kernel's
    assert jq.startswith("jq-")  # --package jq is in the image
    assert hashlib.sha256(debian_image.read_bytes()).hexdigest() == digest_before


def test_boot_on_a_terminal_shows_progress_and_passes_as_a_normal_vm(debian_image, tmp_path):
    status, output = run_cli_on_terminal("boot", debian_image, "--accel", "tcg",
                                         "--firmware", virt.OVMF_CODE,
                                         "--timeout", BOOT_TIMEOUT, "--console-log", tmp_path / "c.log")

    assert status == 0, output[-3000:]
    assert f"booting {debian_image.name}" in output and f"/ {BOOT_TIMEOUT} s" in output
    last = output.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("PASS: booted as a normal VM (not a TD, as launched) under tcg in "), last


def test_the_validator_reads_the_image_as_vmdk_and_refuses_a_truncated_one(debian_image, tmp_path):
    vmdk = tmp_path / "image.vmdk"
    subprocess.run(["qemu-img", "convert", "-O", "vmdk", debian_image, vmdk], check=True)

    result = run_cli("validate", vmdk, "--json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert json.loads(result.stdout)["ok"] is True

    with open(vmdk, "r+b") as image:
        image.truncate(vmdk.stat().st_size // 2)
    result = run_cli("validate", vmdk)
    assert result.returncode == 2 and "damaged vmdk" in result.stderr
