"""Shared fixtures.  The integration tier builds each real debian image (12: grub; 13: UKI + dm-verity) once per run."""

import http.server
import json
import os
import pty
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Self

import pytest

from imagebuilder.build.kiwi import CACHE_DONE_PHASE
from imagebuilder.host.facts import HostFacts

TDX_IMAGE = [sys.executable, "-m", "imagebuilder"]
# Developers iterating on validate/boot tests may reuse a published build directory instead of
# building again; CI never sets this, so there the image is always built for real.
REUSE_BUILD = "TDX_IMAGE_TEST_BUILD"
ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GRUB_CFG = "/boot/grub/grub.cfg"
# Who supplies the integration tier's debian build (its SBOMs' author), from its config file.
TEST_SUPPLIER = "tdx-image integration tests <tdx-image-tests@example.org>"
REUSE_BUILD_13 = "TDX_IMAGE_TEST_BUILD_13"



def pytest_configure(config):
    """The integration tier shares one real build per session: xdist workers would each make
    their own and fight over the package cache (run-tests passes -n 0)."""
    marks = config.getoption("markexpr") or ""
    if config.getoption("numprocesses", None) and "integration" in marks and "not integration" not in marks:
        raise pytest.UsageError("the integration tier runs in one process: add -n 0")

@pytest.fixture(autouse=True)
def default_signal_handlers():
    """The CLI, run in-process, leaves signals ignored after an interrupt (its process would
    exit next); the next test starts with Python's own handlers again."""
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.fixture(scope="session")
def synthetic_image(tmp_path_factory) -> Path:
    """A small disk the validator passes (tests/test_validate_checks.py makes it); read-only:
    tests that break it work on a copy."""
    from tests.test_validate_checks import build_synthetic_image  # it needs the test's helpers

    return build_synthetic_image(tmp_path_factory.mktemp("synthetic"))


def firmware_volume(path: Path) -> Path:
    """A stand-in UEFI flash image: one empty 4 KiB firmware volume."""
    from tests.test_uki_measure import volume  # it builds the volumes of its firmware tests

    path.write_bytes(volume(b""))
    return path


class FakeHost(HostFacts):
    """A host with the facts a test names and otherwise those of a capable build host that
    cannot run TDs (no KVM, no TDVF).  Facts HostFacts keeps as properties are given by name;
    the tools missing, the devices present, the free space and why SUSE targets cannot build
    here, as data.  Whether a file is TDVF is read from the file the test made; whether a TDVF
    measures the boot into RTMRs is ``td_measured_boot`` (None: read from the file too)."""

    CAPABLE = {"is_root": True, "family": "debian", "kiwi_command": "/usr/bin/kiwi-ng",
                   "kiwi_version": "11.1.6", "mounts_vfat": True, "cpu_vendor": "GenuineIntel", "kvm_tdx": "",
                   "qemu_version": "7.2.22", "qemu_has_tdx_guest": False,
                   "kvm_failure": "/dev/kvm is absent", "ovmf": None, "secure_boot_ovmf": None,
                   "tdvf": None}

    def __init__(self, *, missing=(), devices=("/dev/loop-control",), free_bytes=100 * 2**30,
                 build_host_problem=None, td_measured_boot=True, **facts):
        assert set(facts) <= set(self.CAPABLE), f"no such fact: {set(facts) - set(self.CAPABLE)}"
        self.__dict__.update({**self.CAPABLE, **facts})  # what cached_property would have kept
        self._missing, self._devices, self._free = set(missing), set(devices), free_bytes
        self._problem, self._measured_boot = build_host_problem, td_measured_boot

    def td_measured_boot(self, firmware):
        if self._measured_boot is None:
            return super().td_measured_boot(firmware)
        return self._measured_boot

    def missing(self, tools):
        return [tool for tool in tools if tool in self._missing]

    def has_device(self, path):
        return str(path) in self._devices

    def free_bytes(self, path):
        return self._free

    def build_host_problem(self, target):
        return self._problem


def users_directory(path: Path) -> Path:
    """A directory holding a user's file (notes/thesis.txt), which no command may touch."""
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "thesis.txt").write_text("x\n")
    return path / "notes" / "thesis.txt"


def image_with_grub_cfg(image: Path, directory: Path, change) -> Path:
    """A raw copy of ``image`` in ``directory`` whose /boot/grub/grub.cfg is ``change(old
    text)``, edited with debugfs (not with the code under test)."""
    raw = directory / f"{image.stem}.variant.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", image, raw], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    root = next(p for p in table["partitions"] if p["type"] != ESP_TYPE_GUID)
    device = f"{raw}?offset={root['start'] * 512}"
    config = subprocess.run(["debugfs", "-R", f"cat {GRUB_CFG}", device], capture_output=True,
                            check=True).stdout.decode()
    changed = change(config)
    assert changed != config
    (directory / "grub.cfg").write_text(changed)
    for request in (f"rm {GRUB_CFG}", f"write {directory / 'grub.cfg'} {GRUB_CFG}"):
        subprocess.run(["debugfs", "-w", "-R", request, device], capture_output=True, check=True)
    return raw


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would."""
    return subprocess.run([*TDX_IMAGE, *map(str, args)], capture_output=True, text=True, **kwargs)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed command (asserting there is exactly one, and no
    traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def schema_errors(record: str, document: dict) -> list[str]:
    """Why ``document`` does not match the shipped schema of ``record`` (empty: it does)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    from imagebuilder.schemas import RECORDS, schema

    registry = Registry().with_resources(
        (f"urn:tdx-image:schema:{name}", Resource.from_contents(schema(name))) for name in RECORDS)
    validator = Draft202012Validator(schema(record), registry=registry,
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(document)]


def cyclonedx_errors(text: str):
    """CycloneDX 1.6's strict schema validation of ``text``: None when it conforms.  The
    validator is imported on first use: its import takes seconds, which every fast-suite worker
    would pay while merely collecting the modules that use it."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    return JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)


def sbom_conformance(directory: Path, record: dict) -> dict[str, dict[str, list[str]]]:
    """What sbomcheck (ntia-conformance-checker) finds missing in a build's SBOMs, per standard:
    the requirements not met (warnings and optional ones aside) and the components missing each
    element.  Empty lists: conformant."""
    from ntia_conformance_checker.bsi_checker import BSIChecker
    from ntia_conformance_checker.fsct_checker import FSCT3Checker
    from ntia_conformance_checker.ntia_checker import NTIAChecker

    spdx2, spdx3 = str(directory / record["sbom"]["file"]), str(directory / record["sbom_spdx3"]["file"])
    checkers = {"ntia (SPDX 2.3)": NTIAChecker(spdx2), "ntia": NTIAChecker(spdx3, sbom_spec="spdx3"),
                "bsi": BSIChecker(spdx3), "fsct3-min": FSCT3Checker(spdx3, sbom_spec="spdx3")}
    findings = {}
    for name, checker in checkers.items():
        assert checker.parsing_errors == [] and checker.validation_messages == [], name
        unmet = [element for element, met in checker.table_elements
                 if not met and "(Warning)" not in element and "(Optional)" not in element]
        assert checker.compliant == (unmet == []), (name, unmet)
        findings[name] = {"unmet": unmet, **{element: sorted(component for component, _ in missing)
                                             for element, missing in checker.all_components_without_info}}
    return findings


def run_cli_on_terminal(*args, timeout: float = 900) -> tuple[int, str]:
    """Run the real command line with stdout and stderr on a terminal (a pty), as a user sees it;
    return its exit status and everything it wrote (escape sequences included)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([*TDX_IMAGE, *map(str, args)], stdin=subprocess.DEVNULL,
                               stdout=terminal, stderr=terminal, env={**os.environ, "COLUMNS": "200"})
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout), output.decode(errors="replace")


# What apt, dpkg or unattended-upgrades hold while they run: fcntl locks on both of dpkg's files.
HOLD_DPKG_LOCK = """
import fcntl, os, time
for name in ("lock-frontend", "lock"):
    fd = os.open("/var/lib/dpkg/" + name, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(fd, fcntl.LOCK_EX)
print("holding", flush=True)
time.sleep(3600)
"""


class HostDpkgLock:
    """Another process holding the host's dpkg lock, as a running apt-get does (issue 20: KIWI's
    bootstrap failed then).  Builds hold it only while they hold the shared package cache (from
    their "prepared root" phase), so that no other developer's build bootstraps meanwhile."""

    def __init__(self):
        self.holder: subprocess.Popen | None = None

    def hold(self) -> None:
        self.holder = subprocess.Popen([sys.executable, "-c", HOLD_DPKG_LOCK],
                                       stdout=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None and self.holder.stdout.readline() == "holding\n"

    def release(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


# The phase a build starts once it holds the package cache; KIWI's bootstrap comes after it.
HOLDS_THE_CACHE = "… prepared root"


@pytest.fixture(scope="session")
def debian_build(tmp_path_factory) -> Path:
    """The published output directory of one real `tdx-image build debian --release 12
    --boot-test`: the grub chain, which most integration tests read.  Its package phases run
    while another process holds the host's dpkg lock (HostDpkgLock)."""
    if os.environ.get(REUSE_BUILD):
        return Path(os.environ[REUSE_BUILD])
    root = tmp_path_factory.mktemp("build")
    out = root / "debian"
    # The one real build also carries the customisations users make (checked by
    # tests/integration/test_features_integration.py): a package on the command line, and an SSH
    # key for a named user from a config file.
    (root / "ssh").mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tdx-image-test",
                    "-f", root / "ssh" / "id_ed25519"], check=True)
    (root / "tdx-image.toml").write_text('ssh-key = "ssh/id_ed25519.pub"\nssh-user = "tester"\n'
                                         f'supplier = "{TEST_SUPPLIER}"\n')
    # stdout (the --json record) goes to a file: a pipe nobody reads until stderr ends could fill.
    with HostDpkgLock() as dpkg_lock, open(root / "build.stdout", "w") as stdout:
        build = subprocess.Popen([*TDX_IMAGE, "build", "debian", "--release", "12", "--out", str(out),
                                  "--boot-test", "--json", "--config", str(root / "tdx-image.toml"),
                                  "--package", "jq"], stdout=stdout, stderr=subprocess.PIPE, text=True)
        stderr = []
        for line in build.stderr:  # the phases, one a line (not a terminal)
            stderr.append(line)
            if line.startswith(HOLDS_THE_CACHE):
                dpkg_lock.hold()
            elif line.startswith(f"… {CACHE_DONE_PHASE}"):
                dpkg_lock.release()
        returncode = build.wait()
    (out.parent / "build.stderr").write_text("".join(stderr))
    assert returncode == 0, f"the debian build failed:\n{''.join(stderr)[-4000:]}"
    return out


def esp_files(image: Path, names: list[str], work: Path) -> dict[str, Path]:
    """Files of an image's EFI system partition, copied out with mtools (independently of the
    code under test) into ``work``: ``{name: path}`` for names below ``\\EFI\\BOOT``."""
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", image, raw], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    esp = next(p for p in table["partitions"] if p["type"] == ESP_TYPE_GUID)
    copied = {}
    for name in names:
        copied[name] = work / name
        subprocess.run(["mcopy", "-i", f"{raw}@@{esp['start'] * 512}", f"::/EFI/BOOT/{name}",
                        copied[name]], check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    raw.unlink()
    return copied


@pytest.fixture(scope="session")
def debian13_build(tmp_path_factory) -> Path:
    """The published output of one real `tdx-image build debian` with its defaults: Debian 13,
    a UKI and a dm-verity root (the grub chain of debian 12 is debian_build's)."""
    if os.environ.get(REUSE_BUILD_13):
        return Path(os.environ[REUSE_BUILD_13])
    out = tmp_path_factory.mktemp("build13") / "debian"
    result = run_cli("build", "debian", "--out", out, "--json")
    (out.parent / "build.stderr").write_text(result.stderr)
    assert result.returncode == 0, f"the debian 13 build failed:\n{result.stderr[-4000:]}"
    return out


@pytest.fixture(scope="session")
def debian13_image(debian13_build) -> Path:
    return debian13_build / json.loads((debian13_build / "build.json").read_text())["image"]


@pytest.fixture(scope="session")
def debian_ssh_key(debian_build) -> Path:
    """The private key authorized for user ``tester`` in the debian build (beside its --out;
    a reused build must have been made the same way)."""
    return debian_build.parent / "ssh" / "id_ed25519"


@pytest.fixture(scope="session")
def debian_image(debian_build) -> Path:
    return debian_build / json.loads((debian_build / "build.json").read_text())["image"]


@pytest.fixture
def repo_server():
    """A real HTTP server on loopback standing in for package repositories: 200 below /ok/,
    401 below /auth/ unless the login is u:right, 404 elsewhere."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/ok/"):
                self.send_response(200)
            elif self.path.startswith("/auth/"):
                good = self.headers.get("Authorization") == "Basic dTpyaWdodA=="  # u:right
                self.send_response(200 if good else 401)
            else:
                self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
