"""Bad input on every verb (issue 7's corpus): each case exits with its documented code and
one ``error:`` line naming the problem, with no traceback, no hang, and nothing left behind.

The cases run in-process through the click group (milliseconds each); every one that a build
could reach fails before root, the network or KIWI are needed.  Cases that need root (an
immutable directory, a cache directory root cannot write) are skipped without it.
"""

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagebuilder import cli
from imagebuilder.core.paths import DESCRIPTIONS_DIR, OVERLAYS_DIR, PROJECT_ROOT
from tests.conftest import TDX_IMAGE, error_line, users_directory
from tests.test_measure import synthetic_log
from tests.test_verify import ccel

ROOT = os.geteuid() == 0
HANG_SECONDS = 30


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def text(path: Path, content: str = "hello\n", mode: int = 0o644) -> Path:
    path.write_text(content)
    path.chmod(mode)
    return path


def binary(path: Path, size: int = 4096) -> Path:
    path.write_bytes(bytes(range(256)) * (size // 256))
    return path


def credentials(path: Path, mode: int = 0o600) -> Path:
    return text(path, "username=SCC_u\npassword=secret\n", mode)


def users_dir(path: Path) -> Path:
    users_directory(path)
    return path


def read_only(path: Path) -> Path:
    """A directory nobody may write into: immutable for root, mode 555 otherwise."""
    path.mkdir()
    if ROOT:
        subprocess.run(["chattr", "+i", path], check=True)
    else:
        path.chmod(0o555)
    return path


def qcow2(path: Path, truncated: bool = False) -> Path:
    """A qcow2 of random bytes with an MBR signature: a disk image to read, not a bootable one."""
    raw = path.with_suffix(".raw")
    raw.write_bytes(os.urandom(510) + b"\x55\xaa" + os.urandom(4 * 2**20 - 512))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path], check=True)
    raw.unlink()
    if truncated:
        os.truncate(path, path.stat().st_size // 2)
    return path


def directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def loop(path: Path) -> Path:
    """A symbolic link that points at itself through a second one."""
    (path.parent / "loop-b").symlink_to(path)
    path.symlink_to(path.parent / "loop-b")
    return path


def config(path: Path, content: str) -> Path:
    return text(path / "tdx-image.toml", content)


def earlier_output(path: Path) -> Path:
    """What a build published: build.json listing build.log and description/config.xml."""
    directory(path / "description")
    text(path / "description" / "config.xml", "<image/>\n")
    text(path / "build.log")
    text(path / "build.json", json.dumps({
        "tdx_image_version": "0.1", "target": {"name": "debian"}, "image": "x.qcow2",
        "artifacts": {"build.log": {"sha256": "0" * 64, "bytes": 6}},
        "description_files": ["config.xml"]}))
    return path


def with_users_file(path: Path, relative: str) -> Path:
    (path / relative).parent.mkdir(parents=True, exist_ok=True)
    text(path / relative, "the user's\n")
    return path


def artifact_replaced_by_users_directory(path: Path) -> Path:
    (path / "build.log").unlink()
    with_users_file(path, "build.log/notes.txt")
    return path


def qcow2_of_zeros(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "4M"], check=True)
    return path


def backed_by(path: Path, backing: str | Path, backing_format: str = "raw") -> Path:
    """A qcow2 naming ``backing`` as its backing file (-u: qemu-img does not open it)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(backing), "-F",
                    backing_format, path, "4M"], check=True)
    return path


def backed_by_itself(path: Path) -> Path:
    made = backed_by(path.with_name("made.qcow2"), path.name, "qcow2")
    made.rename(path)
    return path


def vmdk_descriptor(path: Path, extent: str) -> Path:
    return text(path, f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                      f'createType="monolithicFlat"\nRW 8 FLAT "{extent}" 0\n')


def deep_json(path: Path, depth: int = 200_000) -> Path:
    return text(path, "[" * depth + "]" * depth)


def ccel_log(path: Path) -> Path:
    path.write_bytes(ccel([(3, 13, b"x" * 100)]))
    return path


def truncated_ccel(path: Path) -> Path:
    path.write_bytes(ccel([(3, 13, b"x" * 100)], tail=0)[:-20])
    return path


def tpm_log(path: Path) -> Path:
    path.write_bytes(synthetic_log([(0, 8, b"v"), (4, 4, b"\0" * 4)]))
    return path


PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHv0 user@host\n"
URL = "https://download.opensuse.org/repositories/x/"

# (id, arguments from the sandbox directory d, exit code, fragment of the error line, env)
CASES = [
    # build: --out
    ("out-users-files", lambda d: ["build", "debian", "--out", users_dir(d / "X")], 2, "did not write (notes)"),
    ("out-empty-string", lambda d: ["build", "debian", "--out", ""], 2, "current directory"),
    ("out-dot", lambda d: ["build", "debian", "--out", "."], 2, "current directory"),
    ("out-dotdot", lambda d: ["build", "debian", "--out", ".."], 2, "current directory"),
    ("out-root", lambda d: ["build", "debian", "--out", "/"], 2, "is / or a directory right below"),
    ("out-top-level", lambda d: ["build", "debian", "--out", "/usr", "--force"], 2, "right below it"),
    ("out-home", lambda d: ["build", "debian", "--out", Path.home(), "--force"], 2, "must be a directory of its own"),
    ("out-project", lambda d: ["build", "debian", "--out", PROJECT_ROOT, "--force"], 2, "is or contains"),
    ("out-in-description", lambda d: ["build", "debian", "--out", DESCRIPTIONS_DIR / "debian" / "o"], 2,
     "inside this project's kiwi_descriptions/"),
    ("out-in-overlay", lambda d: ["build", "debian", "--out", OVERLAYS_DIR / "tdx" / "o", "--force"], 2,
     "inside this project's overlays/"),
    ("out-descriptions", lambda d: ["build", "debian", "--out", DESCRIPTIONS_DIR, "--force"], 2, "is or contains"),
    ("out-is-a-file", lambda d: ["build", "debian", "--out", text(d / "f")], 2, "is a file"),
    ("out-under-a-file", lambda d: ["build", "debian", "--out", text(d / "f") / "out"], 2, "is not a directory",
     None, "root"),
    ("out-is-a-fifo", lambda d: ["build", "debian", "--out", fifo(d / "p")], 2, "not a directory"),
    ("out-read-only", lambda d: ["build", "debian", "--out", read_only(d / "ro") / "out"], 2, "is not writable",
     None, "root"),
    ("out-failed-is-a-file", lambda d: ["build", "debian", "--out", d / "o", "--cache-dir", d / "c"]
     if text(d / "o.failed") else [], 2, "failure directory"),
    ("out-failed-foreign", lambda d: ["build", "debian", "--out", d / "o"] if users_dir(d / "o.failed") else [],
     2, "failure directory"),
    ("out-contains-cache", lambda d: ["build", "debian", "--out", d, "--cache-dir", d / "c", "--force"], 2,
     "is or contains"),
    # build: repositories
    ("mirror-not-a-url", lambda d: ["build", "debian", "--mirror", "not-a-url", "--out", d / "o"], 2, "expected a URL"),
    ("mirror-empty", lambda d: ["build", "debian", "--mirror", "", "--out", d / "o"], 2, "--mirror ''"),
    ("mirror-no-scheme", lambda d: ["build", "leap", "--mirror", "mirror.example/x", "--out", d / "o"], 2, "expected a URL"),
    ("mirror-comma", lambda d: ["build", "debian", "--mirror", "http://m/a,b", "--out", d / "o"], 2, "expected a URL"),
    ("mirror-space", lambda d: ["build", "debian", "--mirror", "http://m/a b", "--out", d / "o"], 2, "expected a URL"),
    ("repo-not-a-url", lambda d: ["build", "leap", "--repo", "download.opensuse.org/x", "--out", d / "o"], 2, "expected a URL"),
    ("repo-too-many-fields", lambda d: ["build", "debian", "--repo", "http://m/d,bookworm,main,contrib", "--out", d / "o"],
     2, "URL,SUITE[,COMPONENTS]"),
    ("repo-empty-suite", lambda d: ["build", "debian", "--repo", "http://m/d,", "--out", d / "o"], 2, "URL,SUITE"),
    ("repo-empty-components", lambda d: ["build", "debian", "--repo", "http://m/d,bookworm,", "--out", d / "o"], 2, "URL,SUITE"),
    ("repo-empty", lambda d: ["build", "leap", "--repo", "", "--out", d / "o"], 2, "expected a URL"),
    ("repo-ftp-typo", lambda d: ["build", "leap", "--repo", "ftp:/x", "--out", d / "o"], 2, "expected a URL"),
    # build: credentials (exit 5: missing, unusable or refused)
    ("credentials-missing", lambda d: ["build", "debian", "--credentials", d / "none", "--out", d / "o"], 5, "does not exist"),
    ("credentials-directory", lambda d: ["build", "debian", "--credentials", d, "--out", d / "o"], 2, "is a directory"),
    ("credentials-fifo", lambda d: ["build", "debian", "--credentials", fifo(d / "p"), "--out", d / "o"], 5, "is a FIFO"),
    ("credentials-dev-null", lambda d: ["build", "debian", "--credentials", "/dev/null", "--out", d / "o"], 5,
     "is a character device"),
    ("credentials-binary", lambda d: ["build", "debian", "--credentials", binary(d / "b"), "--out", d / "o"], 5, "not text"),
    ("credentials-huge", lambda d: ["build", "debian", "--credentials", binary(d / "b", 2**20), "--out", d / "o"], 5,
     "more than"),
    ("credentials-no-password", lambda d: ["build", "debian", "--credentials", text(d / "c", "username=u\n", 0o600),
                                           "--out", d / "o"], 5, "lacks a username= or password="),
    ("credentials-world-readable", lambda d: ["build", "debian", "--credentials", credentials(d / "c", 0o644),
                                              "--out", d / "o"], 5, "readable by group or others"),
    ("credentials-group-readable", lambda d: ["build", "debian", "--credentials", credentials(d / "c", 0o640),
                                              "--out", d / "o"], 5, "chmod 600"),
    ("credentials-user-only", lambda d: ["build", "debian", "--out", d / "o"], 5,
     "TDX_IMAGE_REPO_USER is set but TDX_IMAGE_REPO_PASSWORD is not", {"TDX_IMAGE_REPO_USER": "u", "TDX_IMAGE_REPO_PASSWORD": None}),
    ("credentials-password-only", lambda d: ["build", "debian", "--out", d / "o"], 5,
     "TDX_IMAGE_REPO_PASSWORD is set but TDX_IMAGE_REPO_USER is not", {"TDX_IMAGE_REPO_USER": None, "TDX_IMAGE_REPO_PASSWORD": "p"}),
    ("credentials-empty-user", lambda d: ["build", "debian", "--out", d / "o"], 5,
     "TDX_IMAGE_REPO_PASSWORD is set but TDX_IMAGE_REPO_USER is not", {"TDX_IMAGE_REPO_USER": "", "TDX_IMAGE_REPO_PASSWORD": "p"}),
    # build: keys
    ("ssh-key-missing", lambda d: ["build", "debian", "--ssh-key", d / "none.pub", "--out", d / "o"], 2, "does not exist"),
    ("ssh-key-directory", lambda d: ["build", "debian", "--ssh-key", d, "--out", d / "o"], 2, "is a directory"),
    ("ssh-key-fifo", lambda d: ["build", "debian", "--ssh-key", fifo(d / "p"), "--out", d / "o"], 2, "is a FIFO"),
    ("ssh-key-dev-null", lambda d: ["build", "debian", "--ssh-key", "/dev/null", "--out", d / "o"], 2, "character device"),
    ("ssh-key-huge", lambda d: ["build", "debian", "--ssh-key", text(d / "k.pub", PUB * (2**20 // len(PUB))),
                                "--out", d / "o"], 2, "more than"),
    ("ssh-key-private", lambda d: ["build", "debian", "--ssh-key", text(d / "id", "-----BEGIN OPENSSH PRIVATE KEY-----\n"),
                                   "--out", d / "o"], 2, "not an OpenSSH public key"),
    ("ssh-key-binary", lambda d: ["build", "debian", "--ssh-key", binary(d / "k"), "--out", d / "o"], 2, "not text"),
    ("ssh-key-empty", lambda d: ["build", "debian", "--ssh-key", text(d / "k", ""), "--out", d / "o"], 2,
     "not an OpenSSH public key"),
    ("signing-key-missing", lambda d: ["build", "debian", "--signing-key", d / "none", "--out", d / "o"], 2, "does not exist"),
    ("signing-key-directory", lambda d: ["build", "debian", "--signing-key", d, "--out", d / "o"], 2, "is a directory"),
    ("signing-key-fifo", lambda d: ["build", "debian", "--signing-key", fifo(d / "p"), "--out", d / "o"], 2, "is a FIFO"),
    # build: cache directory (root: these come after the root check)
    ("cache-dir-is-a-file", lambda d: ["build", "debian", "--cache-dir", text(d / "c"), "--out", d / "o"], 2,
     "is a file"),
    ("cache-dir-read-only", lambda d: ["build", "debian", "--cache-dir", read_only(d / "ro") / "c", "--out", d / "o"], 2,
     "is not writable", None, "root"),
    ("cache-dir-under-a-file", lambda d: ["build", "debian", "--cache-dir", text(d / "f") / "c", "--out", d / "o"], 2,
     "not a directory", None, "root"),
    # build: the command line itself
    ("unknown-target", lambda d: ["build", "fedora"], 2, "unknown target 'fedora'"),
    ("no-target", lambda d: ["build"], 2, "Missing argument 'TARGET'"),
    ("unknown-option", lambda d: ["build", "debian", "--bogus"], 2, "No such option '--bogus'"),
    ("unknown-verb", lambda d: ["frobnicate"], 2, "No such command 'frobnicate'"),
    ("dry-run-users-out", lambda d: ["build", "debian", "--dry-run", "--out", users_dir(d / "X")], 2, "did not write"),
    ("dry-run-bad-repo", lambda d: ["build", "debian", "--dry-run", "--repo", "x"], 2, "expected a URL"),
    # validate
    ("validate-missing", lambda d: ["validate", d / "none.qcow2"], 2, "does not exist"),
    ("validate-directory", lambda d: ["validate", d], 2, "is a directory"),
    ("validate-fifo", lambda d: ["validate", fifo(d / "p")], 2, "is a FIFO"),
    ("validate-dev-null", lambda d: ["validate", "/dev/null"], 2, "is a character device"),
    ("validate-dev-zero", lambda d: ["validate", "/dev/zero"], 2, "is a character device"),
    ("validate-empty", lambda d: ["validate", text(d / "e", "")], 2, "empty file"),
    ("validate-readme", lambda d: ["validate", PROJECT_ROOT / "README.md"], 2, "not a disk image"),
    ("validate-random", lambda d: ["validate", binary(d / "r", 2**20)], 2, "not a disk image"),
    ("validate-odd-size", lambda d: ["validate", binary(d / "r", 1000)], 2, "not a disk image"),
    ("validate-truncated-qcow2", lambda d: ["validate", qcow2(d / "t.qcow2", truncated=True)], 2, "qcow2"),
    ("validate-manifest-missing", lambda d: ["validate", qcow2(d / "i.qcow2"), "--manifest", d / "none"], 2,
     "does not exist"),
    ("validate-manifest-fifo", lambda d: ["validate", qcow2(d / "i.qcow2"), "--manifest", fifo(d / "p")], 2, "is a FIFO"),
    ("validate-manifest-directory", lambda d: ["validate", qcow2(d / "i.qcow2"), "--manifest", d], 2, "is a directory"),
    ("validate-junit-missing-dir", lambda d: ["validate", qcow2(d / "i.qcow2"), "--junit", d / "no" / "j.xml"], 2,
     "does not exist"),
    ("validate-junit-read-only", lambda d: ["validate", qcow2(d / "i.qcow2"), "--junit", read_only(d / "ro") / "j.xml"],
     2, "not writable"),
    ("validate-junit-directory", lambda d: ["validate", qcow2(d / "i.qcow2"), "--junit", d], 2, "directory"),
    ("validate-junit-dev-full", lambda d: ["validate", qcow2(d / "i.qcow2"), "--junit", "/dev/full"], 2,
     "No space left on device"),
    ("validate-no-image", lambda d: ["validate"], 2, "Missing argument 'IMAGE'"),
    # boot
    ("boot-timeout-nan", lambda d: ["boot", qcow2(d / "i.qcow2"), "--timeout", "nan"], 2, "not a finite number"),
    ("boot-timeout-inf", lambda d: ["boot", qcow2(d / "i.qcow2"), "--timeout", "inf"], 2, "not a finite number"),
    ("boot-timeout-zero", lambda d: ["boot", qcow2(d / "i.qcow2"), "--timeout", "0"], 2, "not a finite number"),
    ("boot-timeout-negative", lambda d: ["boot", qcow2(d / "i.qcow2"), "--timeout", "-5"], 2, "not a finite number"),
    ("boot-timeout-word", lambda d: ["boot", qcow2(d / "i.qcow2"), "--timeout", "soon"], 2, "not a number of seconds"),
    ("boot-missing", lambda d: ["boot", d / "none.qcow2"], 2, "does not exist"),
    ("boot-directory", lambda d: ["boot", d], 2, "is a directory"),
    ("boot-fifo", lambda d: ["boot", fifo(d / "p")], 2, "is a FIFO"),
    ("boot-text-file", lambda d: ["boot", PROJECT_ROOT / "README.md"], 2, "not a disk image"),
    ("boot-truncated-qcow2", lambda d: ["boot", qcow2(d / "t.qcow2", truncated=True), "--timeout", "600"], 2, "qcow2"),
    ("boot-bad-accel", lambda d: ["boot", qcow2(d / "i.qcow2"), "--accel", "xen"], 2, "'xen' is not one of"),
    # run
    ("run-text-file", lambda d: ["run", PROJECT_ROOT / "README.md", "--accel", "tcg"], 2, "not a disk image"),
    ("run-missing", lambda d: ["run", d / "none.qcow2", "--accel", "tcg"], 2, "does not exist"),
    ("run-directory", lambda d: ["run", d, "--accel", "tcg"], 2, "is a directory"),
    ("run-dev-null", lambda d: ["run", "/dev/null", "--accel", "tcg"], 2, "is a character device"),
    ("run-truncated-qcow2", lambda d: ["run", qcow2(d / "t.qcow2", truncated=True), "--accel", "tcg"], 2, "qcow2"),
    ("run-libvirt-xml-missing-dir", lambda d: ["run", qcow2(d / "i.qcow2"), "--accel", "tcg", "--libvirt-xml",
                                               d / "no" / "x.xml"], 2, "does not exist"),
    ("run-libvirt-xml-read-only", lambda d: ["run", qcow2(d / "i.qcow2"), "--accel", "tcg", "--libvirt-xml",
                                             read_only(d / "ro") / "x.xml"], 2, "not writable"),
    ("run-libvirt-xml-dev-full", lambda d: ["run", qcow2(d / "i.qcow2"), "--accel", "tcg", "--libvirt-xml",
                                            "/dev/full"], 2, "No space left on device"),
    ("run-libvirt-xml-directory", lambda d: ["run", qcow2(d / "i.qcow2"), "--accel", "tcg", "--libvirt-xml", d], 2,
     "directory"),
    ("run-memory-too-small", lambda d: ["run", qcow2(d / "i.qcow2"), "--memory", "16"], 2, "--memory"),
    ("run-no-cpus", lambda d: ["run", qcow2(d / "i.qcow2"), "--cpus", "0"], 2, "--cpus"),
    # measure
    ("measure-missing", lambda d: ["measure", d / "none.qcow2"], 2, "does not exist"),
    ("measure-fifo", lambda d: ["measure", fifo(d / "p")], 2, "is a FIFO"),
    ("measure-readme", lambda d: ["measure", PROJECT_ROOT / "README.md"], 2, "not a disk image"),
    ("measure-truncated-qcow2", lambda d: ["measure", qcow2(d / "t.qcow2", truncated=True)], 2, "qcow2"),
    ("measure-log-fifo", lambda d: ["measure", qcow2(d / "i.qcow2"), "--log", fifo(d / "p")], 2, "is a FIFO"),
    ("measure-log-missing", lambda d: ["measure", qcow2(d / "i.qcow2"), "--log", d / "none"], 2, "does not exist"),
    # issue 20 -- data loss: only what build.json lists is ours, each as what it was
    ("out-users-file-in-description", lambda d: ["build", "debian", "--dry-run", "--out",
     with_users_file(earlier_output(d / "o"), "description/notes.txt")], 2, "description/notes.txt"),
    ("out-users-directory-under-artifact-name", lambda d: ["build", "debian", "--dry-run", "--out",
     artifact_replaced_by_users_directory(earlier_output(d / "o"))], 2, "(build.log)"),
    # issue 20 -- a secret printed: in the error line, --json, the alias
    ("mirror-password-unreachable", lambda d: ["build", "debian", "--mirror", "http://user:secret@127.0.0.1:9/",
                                               "--out", d / "o"], 4, "http://user:***@127.0.0.1:9", None, "root"),
    ("repo-password-not-a-url", lambda d: ["build", "leap", "--repo", "ftp:/user:secret@x", "--out", d / "o"], 2,
     "expected a URL"),
    # issue 20 -- host files handed to the validator or a guest; backing files that hang
    ("validate-backing-etc-shadow", lambda d: ["validate", backed_by(d / "i.qcow2", "/etc/shadow")], 2,
     "names the backing file '/etc/shadow'"),
    ("measure-backing-etc-shadow", lambda d: ["measure", backed_by(d / "i.qcow2", "/etc/shadow")], 2,
     "names the backing file"),
    ("boot-backing-etc-shadow", lambda d: ["boot", backed_by(d / "i.qcow2", "/etc/shadow"), "--accel", "tcg"], 2,
     "names the backing file"),
    ("run-backing-etc-shadow", lambda d: ["run", backed_by(d / "i.qcow2", "/etc/shadow"), "--accel", "tcg"], 2,
     "names the backing file"),
    ("validate-backing-itself", lambda d: ["validate", backed_by_itself(d / "i.qcow2")], 2, "names the backing file"),
    ("validate-backing-itself-allowed", lambda d: ["validate", backed_by_itself(d / "i.qcow2"),
                                                   "--allow-backing-file"], 2, "leads back into its own chain"),
    ("measure-backing-fifo-allowed", lambda d: ["measure", backed_by(d / "i.qcow2", fifo(d / "p")),
                                                "--allow-backing-file"], 2, "is a FIFO"),
    ("boot-backing-fifo-allowed", lambda d: ["boot", backed_by(d / "i.qcow2", fifo(d / "p")), "--accel", "tcg",
                                             "--allow-backing-file"], 2, "is a FIFO"),
    ("validate-vmdk-extent-etc-shadow", lambda d: ["validate", vmdk_descriptor(d / "i.vmdk", "/etc/shadow")], 2,
     "extent files"),
    ("run-vmdk-extent-fifo", lambda d: ["run", vmdk_descriptor(d / "i.vmdk", str(fifo(d / "p"))),
                                        "--allow-backing-file"], 2, "extent files"),
    # issue 20 -- hangs and tracebacks on what --config, paths and JSON can be
    ("config-fifo", lambda d: ["build", "debian", "--config", fifo(d / "p"), "--out", d / "o"], 2, "is a FIFO"),
    ("config-dev-zero", lambda d: ["build", "debian", "--config", "/dev/zero", "--out", d / "o"], 2,
     "character device"),
    ("config-mirror-number", lambda d: ["build", "debian", "--config", config(d, "mirror = 5\n"), "--out", d / "o"],
     2, "mirror = 5 is not text"),
    ("config-repo-numbers", lambda d: ["build", "debian", "--config", config(d, "repo = [5]\n"), "--out", d / "o"],
     2, "repo = 5 is not text"),
    ("config-flag-text", lambda d: ["build", "debian", "--config", config(d, 'no-incremental = "yes"\n'),
                                    "--out", d / "o"], 2, "is not true or false"),
    ("config-size-zero", lambda d: ["build", "debian", "--config", config(d, "size = 0\n"), "--out", d / "o"], 2,
     "too small"),
    ("config-size-table", lambda d: ["build", "debian", "--config", config(d, "[size]\nx = 1\n"), "--out", d / "o"],
     2, "must be one value"),
    ("out-rich-markup", lambda d: ["validate", qcow2(directory(d / "mk[") / "]y.qcow2")], 1, "check(s) failed"),
    ("cache-dir-in-proc", lambda d: ["build", "debian", "--cache-dir", "/proc/self/x", "--out", d / "o"], 2,
     "kernel's /proc"),
    ("out-symlink-loop", lambda d: ["build", "debian", "--out", loop(d / "l") / "o"], 2, "loop of symbolic links"),
    ("cache-dir-symlink-loop", lambda d: ["build", "debian", "--cache-dir", loop(d / "l"), "--out", d / "o"], 2,
     "loop of symbolic links"),
    ("validate-name-too-long", lambda d: ["validate", d / ("a" * 300)], 2, "longer than the system allows"),
    ("out-name-too-long-for-staging", lambda d: ["build", "debian", "--dry-run", "--out", d / ("o" * 250)], 2,
     "is too long"),
    ("validate-measurements-200k-deep", lambda d: ["validate", qcow2(d / "i.qcow2"), "--measurements",
                                                   deep_json(d / "m.json")], 2, "nested deeper than"),
    # issue 20 -- protection gaps: refused even with --force
    ("out-in-package-cache", lambda d: ["build", "debian", "--dry-run", "--force", "--out", d / "c" / "o",
                                        "--cache-dir", d / "c"], 2, "inside the package cache"),
    ("out-in-lock-dir", lambda d: ["build", "debian", "--dry-run", "--force", "--out", "/run/lock/tdx-image/o"],
     2, "system directory /run"),
    ("out-usr-bin", lambda d: ["build", "debian", "--dry-run", "--force", "--out", "/usr/bin"], 2,
     "system directory /usr"),
    ("out-sudo-users-home", lambda d: ["build", "debian", "--dry-run", "--force", "--out", "/var/cache/man"], 2,
     "is or contains /var/cache/man", {"SUDO_USER": "man"}),
    ("cache-dir-root", lambda d: ["build", "debian", "--dry-run", "--cache-dir", "/", "--out", d / "o"], 2,
     "whole system"),
    ("cache-dir-system", lambda d: ["build", "debian", "--dry-run", "--cache-dir", "/usr/lib/x", "--out", d / "o"],
     2, "system directory /usr"),
    # issue 20 -- wrong or forged messages, absurd values
    ("out-newline-forges-error", lambda d: ["build", "debian", "--out", f"{d}/o\nerror: forged"], 2,
     "contains a control character"),
    ("validate-qcow2-without-partitions", lambda d: ["validate", qcow2_of_zeros(d / "z.qcow2")], 2,
     "no partition table"),
    ("boot-firmware-etc-shadow", lambda d: ["boot", qcow2(d / "i.qcow2"), "--firmware", "/etc/shadow",
                                            "--accel", "tcg"], 2, "--firmware /etc/shadow"),
    ("run-firmware-not-a-volume", lambda d: ["run", qcow2(d / "i.qcow2"), "--firmware", text(d / "fw"),
                                             "--accel", "tcg"], 2, "is not UEFI firmware"),
    ("size-absurd", lambda d: ["build", "debian", "--size", "99999999999G", "--out", d / "o"], 2, "too large"),
    ("run-memory-absurd", lambda d: ["run", qcow2(d / "i.qcow2"), "--memory", str(2**40)], 2, "--memory"),
    ("run-cpus-absurd", lambda d: ["run", qcow2(d / "i.qcow2"), "--cpus", "100000"], 2, "--cpus"),
    ("ssh-key-bad-base64", lambda d: ["build", "debian", "--ssh-key", text(d / "k.pub", "ssh-ed25519 !!!! u@h\n"),
                                      "--out", d / "o"], 2, "not a valid OpenSSH public key"),
    ("ssh-key-type-mismatch", lambda d: ["build", "debian", "--ssh-key", text(d / "k.pub", PUB.replace(
        "ssh-ed25519 ", "ssh-rsa ")), "--out", d / "o"], 2, "not a valid OpenSSH public key"),
    ("ssh-user-system", lambda d: ["build", "debian", "--ssh-key", text(d / "k.pub", PUB), "--ssh-user", "daemon",
                                   "--out", d / "o"], 2, "system user"),
    ("ssh-user-service", lambda d: ["build", "debian", "--ssh-key", text(d / "k.pub", PUB), "--ssh-user", "_apt",
                                    "--out", d / "o"], 2, "system user"),
    ("measure-firmware-not-tdvf", lambda d: ["measure", "--firmware", PROJECT_ROOT / "README.md"], 2,
     "no OVMF GUID table"),
    ("measure-nothing", lambda d: ["measure"], 2, "give IMAGE"),
    # verify
    ("verify-log-missing", lambda d: ["verify", "--log", d / "none"], 2, "does not exist"),
    ("verify-log-fifo", lambda d: ["verify", "--log", fifo(d / "p")], 2, "is a FIFO"),
    ("verify-log-readme", lambda d: ["verify", "--log", PROJECT_ROOT / "README.md"], 2, "Spec ID"),
    ("verify-log-truncated", lambda d: ["verify", "--log", truncated_ccel(d / "t.dat")], 2, "cut off"),
    ("verify-quote-readme", lambda d: ["verify", "--log", ccel_log(d / "c.dat"), "--quote",
                                       PROJECT_ROOT / "README.md"], 2, "quote version"),
    ("verify-quote-with-tpm-log", lambda d: ["verify", "--log", tpm_log(d / "t.log"), "--quote",
                                             PROJECT_ROOT / "README.md"], 2, "is a TPM log"),
    ("verify-image-and-measurements", lambda d: ["verify", "--log", ccel_log(d / "c.dat"), "--image",
                                                 qcow2(d / "i.qcow2"), "--measurements", d / "m.json"], 2,
     "--image and --measurements"),
    ("verify-measurements-readme", lambda d: ["verify", "--log", ccel_log(d / "c.dat"), "--measurements",
                                              PROJECT_ROOT / "README.md"], 2, "not a measurements file"),
    # doctor
    ("doctor-bad-only", lambda d: ["doctor", "--only", "gpu"], 2, "'gpu' is not one of"),
]


def snapshot(directory: Path) -> dict[str, int]:
    """Every path below ``directory`` with its mode: a case may not add, remove or change any."""
    return {str(path.relative_to(directory)): path.lstat().st_mode
            for path in [directory, *directory.rglob("*")]}


def undo_read_only(directory: Path) -> None:
    for path in directory.rglob("ro"):
        if ROOT:
            subprocess.run(["chattr", "-i", path], check=True)
        path.chmod(0o755)


# With --json the same failure is also one document on stdout; one case per kind of failure.
JSON_CASES = {"out-users-files", "mirror-not-a-url", "credentials-fifo", "credentials-user-only",
              "ssh-key-huge", "cache-dir-read-only", "unknown-option", "unknown-verb",
              "validate-readme", "validate-junit-dev-full", "boot-timeout-nan",
              "boot-truncated-qcow2", "run-text-file", "measure-log-fifo", "run-libvirt-xml-dev-full", "doctor-bad-only",
              "mirror-password-unreachable", "repo-password-not-a-url", "validate-backing-etc-shadow",
              "config-mirror-number", "out-newline-forges-error", "out-users-file-in-description"}
RUNS = [(case, False) for case in CASES] + [(case, True) for case in CASES if case[0] in JSON_CASES]


@pytest.mark.parametrize("case, as_json", RUNS, ids=[case[0] + ("-json" if as_json else "")
                                                     for case, as_json in RUNS])
def test_bad_input(case, as_json, tmp_path, monkeypatch):
    name, make_args, exit_code, fragment, env, needs = (*case, None, None)[:6]
    if needs == "root" and not ROOT:
        pytest.skip("checked after the root check")
    sandbox, temp = tmp_path / "sandbox", tmp_path / "tmp"
    sandbox.mkdir()
    temp.mkdir()
    monkeypatch.chdir(sandbox)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    args = [str(arg) for arg in make_args(sandbox)] + (["--json"] if as_json else [])
    before = snapshot(sandbox)

    def hang(*_):
        raise TimeoutError(f"{name} hung")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_SECONDS)
    try:
        result = CliRunner().invoke(cli.main, args, env=env)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        undo_read_only(sandbox)

    assert isinstance(result.exception, SystemExit), result.exception  # never a traceback
    assert result.exit_code == exit_code, result.stderr
    assert fragment in error_line(result), result.stderr
    assert "secret" not in result.stdout + result.stderr  # the credentials' and URLs' passwords
    if as_json:
        document = json.loads(result.stdout)
        assert document["ok"] is False and document["exit_code"] == exit_code
        assert fragment in document["error"]
    assert snapshot(sandbox) == before
    assert list(temp.iterdir()) == []
    for place in (DESCRIPTIONS_DIR / "debian" / "o", OVERLAYS_DIR / "tdx" / "o"):
        assert not place.exists()



def test_a_closed_stdout_is_one_error_line(synthetic_image):
    """Issue 20: `measure IMAGE | head -c1` exited 1 without an error line (BrokenPipeError)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    try:
        result = subprocess.run([*TDX_IMAGE, "measure", str(synthetic_image), "--events"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True,
                                timeout=HANG_SECONDS * 4)
    finally:
        os.close(write_end)
    assert result.returncode == 3, result.stderr
    assert error_line(result) == \
        "error: stdout was closed before the output was written (broken pipe)"
