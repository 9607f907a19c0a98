"""`tdx-image build` end to end in seconds, without root: the real flow (preflight aside) around a
stand-in kiwi-ng that prints KIWI's phase lines and "builds" a small synthetic image.

Real here: the command line, settings, outdir checks, locks (in a temporary lock directory), the
repository check (local file:// repositories), composition, the incremental prepared root,
kiwi.execute with its log and redaction, publishing, the SBOM, validation of the synthetic image
(tests/test_validate_checks.py makes it; every check runs), measurement, build.json, the
exchange into --out, OUT.failed, and the phase events.  Passed through a seam: the host (a FakeHost)
(root, host tools, free space), which a non-root test machine cannot pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagebuilder.build import provenance
from imagebuilder.core.paths import SHARED_OVERLAY
from imagebuilder.host import locks
from imagebuilder.cli import main
from imagebuilder.build.kiwi import DONE_PHASE, PHASES
from tests.conftest import FakeHost, cyclonedx_errors, sbom_conformance, schema_errors
from tests.test_validate_checks import BREAKAGES

IMAGE = "tdx-guest-debian-12.x86_64-12.0.0.raw"
SECRET = "hunter2-s3cret"
TOP_PHASES = ["check repositories", "compose", "prepared root", "kiwi", "publish", "validate",
              "measure"]
KIWI_STEPS = [name for _, name in PHASES if name != DONE_PHASE]
KIWI_NG = r"""#!/bin/bash
# Stand-in kiwi-ng: KIWI's phase lines (each marker as KIWI prints it), a root for
# `system prepare`, a synthetic disk image and its package list for `system build`.
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=$2 ;;
        --target-dir) target=$2 ;;
        --description) description=$2 ;;
        --shared-cache-dir) cache=$2 ;;
    esac
    shift
done
say() { echo "[ INFO    ]: 10:00:00 | $1"; }
# The build's credentials, where KIWI's zypper backend writes them for an authenticated
# repository (kiwi/repository/zypper.py add_repo): plain text below the shared cache.
credentials="$(dirname "$description")/credentials"
if [ -f "$credentials" ]; then
    mkdir -p "$cache/zypper/credentials"
    printf 'username=%s\npassword=%s\n' "$(cut -d: -f1 "$credentials")" \
        "$(cut -d: -f2- "$credentials")" > "$cache/zypper/credentials/kiwiRepoCredentials"
    mkdir -p "$cache/apt-get/auth.conf.d"  # and its apt backend (kiwi/repository/apt.py)
    printf 'machine file:/mirror login %s password %s\n' "$(cut -d: -f1 "$credentials")" \
        "$(cut -d: -f2- "$credentials")" > "$cache/apt-get/auth.conf.d/bookworm.conf"
fi
# What KIWI must never pass on: the repository password, here in its own output.
cat "$(dirname "$description")/credentials" 2>/dev/null
say '@PREPARE@'
say '@BOOTSTRAP@'
if [ -n "$FAKE_KIWI_STOP" ]; then  # the build is stopped by SIGTERM while KIWI bootstraps
    sleep 0.5
    kill -TERM "$PPID"
    while true; do sleep 0.1; done
fi
say '@INSTALL@ for build type: oem'
if [ -n "$FAKE_KIWI_FAIL" ]; then
    echo '[ ERROR   ]: 10:00:01 | KiwiDiskGeometryError: the disk is too small'
    exit 1
fi
if [ -n "$root" ]; then
    # What installing dbus leaves: dpkg's record, its copyright file, apt's cached archive.
    mkdir -p "$root/var/lib/dpkg" "$root/usr/share/doc/dbus" "$cache/apt-get/archives"
    printf 'Package: dbus\nStatus: install ok installed\nMaintainer: Utopia Maintenance Team <pkg-utopia-maintainers@lists.alioth.debian.org>\nArchitecture: amd64\nVersion: 1.14\n' \
        > "$root/var/lib/dpkg/status"
    printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: 2002-2008 Red Hat, Inc.\nLicense: AFL-2.1 or GPL-2+\n' \
        > "$root/usr/share/doc/dbus/copyright"
    echo 'dbus archive' > "$cache/apt-get/archives/dbus_1.14_amd64.deb"
    exit 0
fi
@LATER@
mkdir -p "$target/build/image-root/image"
echo "<image><repository>file:///mirror?password=$(cut -d: -f2 "$(dirname "$description")/credentials" 2>/dev/null)</repository></image>" \
    > "$target/build/image-root/image/config.xml"
cp --sparse=always "$FAKE_KIWI_IMAGE" "$target/@IMAGE@"
echo 'dbus|None|1.14|None|amd64|None|None' > "$target/@BASE@.packages"
echo '{"disk_image": {"filename": "'"$target/@IMAGE@"'"},
       "image_packages": {"filename": "'"$target/@BASE@.packages"'"}}' > "$target/kiwi.result.json"
"""
for placeholder, text in {"@PREPARE@": PHASES[0][0], "@BOOTSTRAP@": PHASES[1][0],
                          "@INSTALL@": PHASES[2][0], "@BASE@": IMAGE.removesuffix(".raw"),
                          "@IMAGE@": IMAGE,
                          "@LATER@": "\n".join(f"say '{marker}'" for marker, _ in PHASES[3:])}.items():
    KIWI_NG = KIWI_NG.replace(placeholder, text)


@pytest.fixture
def standin(tmp_path, monkeypatch, synthetic_image) -> Path:
    """A host for `build debian`: the stand-in kiwi-ng, local repositories, a lock directory
    (run_build hands the build a host that has what the preflight asks).  Returns the --out to
    build into."""
    kiwi_ng = tmp_path / "bin" / "kiwi-ng"
    kiwi_ng.parent.mkdir()
    kiwi_ng.write_text(KIWI_NG)
    kiwi_ng.chmod(0o755)
    monkeypatch.setattr(locks, "LOCK_DIR", tmp_path / "locks")
    for suite, base in (("bookworm", "debian"), ("bookworm-updates", "debian"),
                       ("bookworm-security", "debian-security")):
        release = tmp_path / "mirror" / base / "dists" / suite / "InRelease"
        release.parent.mkdir(parents=True)
        release.write_text(f"Suite: {suite}\n")
    monkeypatch.setenv("FAKE_KIWI_IMAGE", str(synthetic_image))
    monkeypatch.setenv("TDX_IMAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TDX_IMAGE_REPO_USER", "builder")
    monkeypatch.setenv("TDX_IMAGE_REPO_PASSWORD", SECRET)
    (tmp_path / "images").mkdir()
    return tmp_path / "images" / "debian"


def run_build(out: Path, *options: str):
    work = out.parent.parent
    mirror = f"file://{work / 'mirror' / 'debian'}"
    # debian 12: the stand-in mirror has bookworm's suites, the stand-in KIWI no verity hook
    return CliRunner().invoke(main, ["build", "debian", "--release", "12", "--out", str(out), "--mirror", mirror,
                                     *options], obj=FakeHost(kiwi_command=str(work / "bin" / "kiwi-ng")))


def assert_no_credentials_in_cache(cache: Path) -> None:
    """KIWI's credentials files are gone and their directories are root's alone."""
    assert not [path for path in cache.rglob("*") if path.is_file()
                and SECRET.encode() in path.read_bytes()]
    assert (cache / "zypper" / "credentials").stat().st_mode & 0o777 == 0o700


def events(stderr: str) -> list[dict]:
    """The --progress=json stream: every line one JSON object."""
    return [json.loads(line) for line in stderr.splitlines()]


def phase_events(stream: list[dict], within: str | None = None) -> list[tuple[str, str]]:
    return [(event["status"], event["phase"]) for event in stream
            if event["status"] != "note" and event.get("within") == within]


def published_text(directory: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in directory.rglob("*")
                   if path.is_file() and not path.name.endswith(".raw"))


def test_a_build_publishes_a_validated_image_and_reports_every_phase(standin):
    result = run_build(standin, "--progress=json", "--json")

    assert result.exit_code == 0, result.output + result.stderr
    record = json.loads(result.stdout)
    assert record == json.loads((standin / "build.json").read_text())
    assert schema_errors("build", record) == []
    assert sorted(p.name for p in standin.parent.iterdir()) == ["debian"]  # no staging left
    assert {IMAGE, f"{IMAGE}.sha256", IMAGE.replace(".raw", ".spdx.json"), "kiwi.result.json",
            "build.log", "prepare.log", "overlay-manifest.json", "validation.json",
            "validation.junit.xml", "measurements.json", "description"} <= {
        p.name for p in standin.iterdir()}
    assert (standin / "description" / "kiwi-expanded.xml").is_file()
    assert json.loads((standin / "validation.json").read_text())["ok"] is True
    assert record["inputs"]["credentials_used"] is True and record["incremental"] is False
    # The secret KIWI printed and wrote into its state XML reached no event, log or record.
    assert SECRET not in result.stderr + result.stdout + published_text(standin)
    assert "***" in (standin / "build.log").read_text()
    assert_no_credentials_in_cache(standin.parent.parent / "cache")

    stream = events(result.stderr)
    assert {"status", "phase", "time"} <= set(next(event for event in stream if "phase" in event))
    # debian 12 has a writable root only, and the build says what that means
    assert any("the host can modify" in event.get("message", "") for event in stream)
    top = phase_events(stream)
    assert top == [(status, name) for name in TOP_PHASES for status in ("started", "finished")]
    assert [name for status, name in phase_events(stream, "kiwi") if status == "started"] == KIWI_STEPS
    assert [name for status, name in phase_events(stream, "prepared root")
            if status == "started"] == [f"prepare root: {step}" for step in KIWI_STEPS[:3]] + [
        "cache prepared root"]
    # build.json's durations are the events' durations.
    finished = {event["phase"]: event["duration_s"] for event in stream
                if event["status"] == "finished"}
    durations = record["durations_s"]
    assert {name: durations[name.replace(" ", "_")] for name in TOP_PHASES} == {
        name: finished[name] for name in TOP_PHASES}
    assert durations["kiwi_phases"] == {name: seconds for name, seconds in finished.items()
                                        if name not in TOP_PHASES}
    assert durations["total"] >= sum(durations[name.replace(" ", "_")] for name in TOP_PHASES) - 0.5

    # A second build reuses the prepared root and replaces the first one's output.
    again = run_build(standin, "--progress=json", "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["incremental"] is True
    assert [name for status, name in phase_events(events(again.stderr), "prepared root")
            if status == "started"] == ["copy prepared root"]


def test_a_build_publishes_conformant_sboms_and_its_provenance(standin):
    supplier, builder = "Example Builders <images@example.org>", "https://ci.example.org/runs/1"
    result = run_build(standin, "--json", "--supplier", supplier, "--builder-id", builder)

    assert result.exit_code == 0, result.output + result.stderr
    record = json.loads(result.stdout)
    assert schema_errors("build", record) == []
    for key in ("sbom", "sbom_spdx3", "sbom_cyclonedx", "provenance"):
        published = standin / record[key]["file"]
        assert hashlib.sha256(published.read_bytes()).hexdigest() == record[key]["sha256"] == \
            record["artifacts"][published.name]["sha256"]
    # dbus, as the stand-in installs it (maintainer, DEP-5 copyright file, cached archive), is
    # all a conformant SBOM needs; --supplier names the image's supplier and the SBOMs' author.
    assert all(finding["unmet"] == [] for finding in sbom_conformance(standin, record).values())
    cyclonedx = (standin / record["sbom_cyclonedx"]["file"]).read_text()
    assert cyclonedx_errors(cyclonedx) is None

    statement = json.loads((standin / record["provenance"]["file"]).read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    image_sha256 = (standin / f"{IMAGE}.sha256").read_text().split()[0]
    assert statement["subject"] == [{"name": IMAGE, "digest": {"sha256": image_sha256}}]
    definition, run = statement["predicate"]["buildDefinition"], statement["predicate"]["runDetails"]
    assert definition["buildType"] == provenance.BUILD_TYPE
    assert definition["externalParameters"]["target"] == "debian"
    assert definition["externalParameters"]["supplier"] == supplier
    dependencies = {entry["name"]: entry for entry in definition["resolvedDependencies"]}
    for suite, base in (("bookworm", "debian"), ("bookworm-security", "debian-security")):
        in_release = standin.parent.parent / "mirror" / base / "dists" / suite / "InRelease"
        assert dependencies[suite]["digest"] == {"sha256": hashlib.sha256(in_release.read_bytes()).hexdigest()}
        assert dependencies[suite]["annotations"]["metadata"] == f"dists/{suite}/InRelease"
    overlay = dependencies[f"overlay:{SHARED_OVERLAY.name}"]["digest"]["sha256"]
    assert overlay == provenance.tree_digest(SHARED_OVERLAY)  # tests/test_provenance.py: README's line
    assert dependencies["kiwi"]["uri"] == "pkg:generic/kiwi@11.1.6"
    assert run["builder"]["id"] == builder
    assert run["metadata"]["startedOn"] <= run["metadata"]["finishedOn"]
    assert {entry["name"] for entry in run["byproducts"]} == {
        record[key]["file"] for key in ("sbom", "sbom_spdx3", "sbom_cyclonedx")}
    assert SECRET not in json.dumps(statement)


def test_an_image_that_fails_validation_is_kept_out_of_out(standin, synthetic_image, tmp_path,
                                                          monkeypatch):
    broken = tmp_path / "broken.raw"
    shutil.copy(synthetic_image, broken)
    next(b for b in BREAKAGES if b.name == "machine-id baked in").break_image(broken)
    monkeypatch.setenv("FAKE_KIWI_IMAGE", str(broken))

    result = run_build(standin, "--progress=json")

    assert result.exit_code == 1, result.stderr
    assert "error: the built image failed validation: secure.machine-id" in result.stderr
    assert sorted(p.name for p in standin.parent.iterdir()) == ["debian.failed"]
    failed = standin.parent / "debian.failed"
    assert json.loads((failed / "validation.json").read_text())["ok"] is False
    failure = json.loads((failed / "failure.json").read_text())
    assert failure["exit_code"] == 1 and "validation.json" in failure["files"]
    assert not any(path.suffix == ".raw" for path in failed.iterdir())
    stream = events(result.stderr.split("\nerror: ")[0])
    assert phase_events(stream)[-2:] == [("started", "validate"), ("failed", "validate")]


def test_a_kiwi_failure_shows_which_phase_failed_and_keeps_the_log(standin, monkeypatch):
    monkeypatch.setenv("FAKE_KIWI_FAIL", "1")

    result = run_build(standin, "--no-incremental")  # the display, not on a terminal

    assert result.exit_code == 6, result.stderr
    lines = result.stderr.splitlines()
    assert "… bootstrap" in lines and "  ✗ install packages (0.0s)" in lines
    assert any(line.startswith("✗ kiwi (") for line in lines)
    assert lines[-1].startswith("error: KiwiDiskGeometryError: the disk is too small (full log: "
                                f"{standin.parent / 'debian.failed' / 'build.log'})")
    failed = standin.parent / "debian.failed"
    assert "KiwiDiskGeometryError" in (failed / "build.log").read_text()
    assert json.loads((failed / "failure.json").read_text())["exit_code"] == 6
    assert sorted(p.name for p in standin.parent.iterdir()) == ["debian.failed"]
    assert SECRET not in published_text(failed)
    assert_no_credentials_in_cache(standin.parent.parent / "cache")


def test_an_interrupt_mid_phase_ends_it_as_failed(standin, monkeypatch):
    monkeypatch.setenv("FAKE_KIWI_STOP", "1")

    result = run_build(standin, "--no-incremental", "--progress=json")

    assert result.exit_code == 130, result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: build stopped by SIGTERM")
    stream = events(result.stderr.split("\nerror: ")[0])
    (started, step), (ended, same_step) = phase_events(stream, "kiwi")[-2:]
    assert (started, ended, same_step) == ("started", "failed", step)
    assert phase_events(stream)[-1] == ("failed", "kiwi")
    failed = standin.parent / "debian.failed"
    assert json.loads((failed / "failure.json").read_text())["exit_code"] == 130
    assert sorted(p.name for p in standin.parent.iterdir()) == ["debian.failed"]
    assert SECRET not in published_text(failed)
    assert_no_credentials_in_cache(standin.parent.parent / "cache")


def test_a_wait_for_the_package_cache_is_a_phase_of_its_own(standin, tmp_path, monkeypatch):
    other_build = locks.Lock("cache", tmp_path / "cache")  # installing packages
    assert other_build.try_acquire()
    wait_for_the_cache = locks.Lock.acquire

    def other_build_finishes_meanwhile(lock):  # once the build waits, not after a while
        other_build.release()
        wait_for_the_cache(lock)

    monkeypatch.setattr(locks.Lock, "acquire", other_build_finishes_meanwhile)

    result = run_build(standin, "--no-incremental", "--progress=json")

    assert result.exit_code == 0, result.stderr
    wait = [event for event in events(result.stderr)
            if event.get("phase") == "wait for the package cache"]
    assert [event["status"] for event in wait] == ["started", "finished"]
    assert wait[0]["message"] == (f"wait for the package cache {tmp_path / 'cache'} "
                                  f"(build pid {os.getpid()} is using it)")
    durations = json.loads((standin / "build.json").read_text())["durations_s"]
    assert durations["wait_for_the_package_cache"] == wait[1]["duration_s"]


def test_a_killed_builds_staging_is_removed_and_nothing_that_is_not_ours(standin):
    """Issue 20: a SIGKILLed build left its staging directory (930 MB) for good.  The next build
    into the same --out removes it, saying so; a look-alike without the owner record, or one
    of another --out, stays."""
    # The pid of a process that has exited and was reaped.
    dead_pid = int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout)
    parent = standin.parent
    parent.mkdir(parents=True, exist_ok=True)
    killed = parent / f".{standin.name}.staging-killed1"
    (killed / "kiwi-tmp" / "kiwi_xslt-x").mkdir(parents=True)
    (killed / "tdx-image-build.json").write_text(json.dumps(
        {"tool": "tdx-image", "out": str(standin.resolve()), "pid": dead_pid}))
    users = parent / f".{standin.name}.staging-mine"
    users.mkdir()
    (users / "notes.txt").write_text("the user's\n")
    other_out = parent / f".{standin.name}.staging-other"
    other_out.mkdir()
    (other_out / "tdx-image-build.json").write_text(json.dumps(
        {"tool": "tdx-image", "out": str(parent / "elsewhere"), "pid": dead_pid}))

    result = run_build(standin)

    assert result.exit_code == 0, result.stderr
    assert not killed.exists()
    assert f"removed the staging directory a killed build left: {killed} (build pid {dead_pid})" \
        in result.stderr
    assert (users / "notes.txt").read_text() == "the user's\n" and other_out.is_dir()


def test_rich_markup_in_out_is_shown_as_text(standin, tmp_path):
    """Issue 20: --out out/mk[/]y published and then crashed printing its "built" line."""
    out = tmp_path / "mk[" / "]y"
    result = run_build(out)
    assert result.exit_code == 0, result.stderr
    assert f"built {out / IMAGE}" in result.stderr.replace("\n", "")
    record = json.loads((out / "build.json").read_text())
    assert "config.xml" in record["description_files"]
