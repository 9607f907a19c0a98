"""Run ``kiwi-ng system build`` as a child process: progress by phase, a full redacted log,
typed failures, and a clean stop on SIGINT/SIGTERM.

Step three of the flow.  KIWI runs as a subprocess (it needs root, mounts and global state,
and ``import kiwi`` replaces Python's logger class).  Its ``--debug`` output is read from a
pipe rather than left to ``--logfile`` so that every line passes the secret filter before it
is written anywhere.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import cleanup
from ..host import runner, signals
from ..core.errors import BuildError, CredentialsError, Interrupted, RepositoryError
from ..distros.repos import Repository

# KIWI's image root, below its --target-dir.
IMAGE_ROOT = Path("build/image-root")
HOSTSHIM = Path(__file__).resolve().parent / "hostshim" / "esp-shim"
SHIMMED_COMMANDS = ("mount", "umount", "mountpoint")

# KIWI's own INFO messages that open each step of a disk build, in order.
PHASES = (
    ("Preparing new root system", "prepare"),
    ("Installing bootstrap packages", "bootstrap"),
    ("Installing system (chroot)", "install packages"),
    ("Calling config.sh script", "configure"),
    ("Creating raw disk image", "partition"),
    ("initrd archive", "initrd"),
    ("Creating grub2 bootloader", "bootloader"),
    ("Syncing system to image", "write filesystems"),
    ("Disk Format", "convert"),
    ("Result files", "done"),
)
# The first phase after KIWI's package manager is done with the shared package cache.
CACHE_DONE_PHASE = "partition"
# KIWI's last marker: its build is over (no phase of its own).
DONE_PHASE = PHASES[-1][1]
ERROR_LINE = re.compile(r"\[ ERROR\s*\]: [\d:]+ \| (Kiwi\w+): (.*)")
# Seconds KIWI gets after SIGINT to unwind its mounts before the process group is killed.
STOP_GRACE = 120
# Where KIWI writes an authenticated repository's user and password, in plain text, below the
# shared cache, never removing them: its zypper backend to zypper/credentials/kiwiRepoCredentials
# (``username=``/``password=``; kiwi/repository/zypper.py ``add_repo``, the name from
# kiwi/system/uri.py ``credentials_file_name``), its apt backend to apt-get/auth.conf.d/NAME.conf
# (``machine URI login USER password SECRET``; kiwi/repository/apt.py ``add_repo``).
# The zypper one is made 0700 before KIWI runs; the apt one is left as KIWI makes it (apt's
# download methods run as the unprivileged _apt user), and tdx-image passes no credentials to
# apt repositories.
ZYPPER_CREDENTIALS_DIR = Path("zypper") / "credentials"
CREDENTIALS_DIRS = (ZYPPER_CREDENTIALS_DIR, Path("apt-get") / "auth.conf.d")


@dataclass
class KiwiInvocation:
    """One KIWI build: the command and everything needed to run and report it."""

    kiwi: str
    description: Path
    target_dir: Path
    cache_dir: Path
    repositories: list[Repository]
    profile: str | None = None
    credentials_file: Path | None = None  # holds "user:password" for authenticated repositories
    signing_keys: list[Path] = field(default_factory=list)
    esp_fallback_dir: Path | None = None  # when set, vfat mounts are staged via HOSTSHIM
    prepare_root: Path | None = None  # when set: `system prepare` of this root only (incremental.py)
    allow_existing_root: bool = False  # build on a root already in target_dir/build/image-root

    def command(self) -> list[str]:
        command = [self.kiwi, "--debug", "--shared-cache-dir", str(self.cache_dir)]
        if self.profile:
            command += ["--profile", self.profile]
        if self.prepare_root:
            command += ["system", "prepare", "--description", str(self.description),
                        "--root", str(self.prepare_root), "--ignore-repos"]
        else:
            command += ["system", "build", "--description", str(self.description),
                        "--target-dir", str(self.target_dir), "--ignore-repos"]
        if self.allow_existing_root:
            command.append("--allow-existing-root")
        for repo in self.repositories:
            command += ["--add-repo", repo.kiwi_add_repo()]
        # KIWI pairs --add-repo-credentials with --add-repo by position; it only accepts
        # them as a leading run, so authenticated repositories are ordered first.
        if self.credentials_file:
            for repo in self.repositories:
                if not repo.authenticated:
                    break
                command += ["--add-repo-credentials", str(self.credentials_file)]
        for key in self.signing_keys:
            command += ["--signing-key", str(key)]
        return command

    def environment(self) -> dict[str, str]:
        # KIWI builds the initrd itself when it creates the disk; the one distribution kernel
        # hooks would build at package install (Debian's honour INITRD=No) is wasted work.
        env = dict(os.environ, INITRD="No")
        if self.esp_fallback_dir:
            bin_dir = self.esp_fallback_dir / "bin"
            env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
            env["TDX_IMAGE_ESP_STATE"] = str(self.esp_fallback_dir / "state")
        return env

    def prepare_esp_fallback(self) -> None:
        if not self.esp_fallback_dir:
            return
        (self.esp_fallback_dir / "state").mkdir(parents=True, exist_ok=True)
        (self.esp_fallback_dir / "bin").mkdir(parents=True, exist_ok=True)
        for name in SHIMMED_COMMANDS:
            link = self.esp_fallback_dir / "bin" / name
            if not link.exists():
                link.symlink_to(HOSTSHIM)


def seal_repository_credentials(cache_dir: Path) -> None:
    """Before KIWI runs: the directory KIWI's zypper writes credentials to exists and is root's
    alone (0700, whatever the umask made of an earlier one), and KIWI's credentials directories
    hold nothing a killed build left."""
    directory = cache_dir / ZYPPER_CREDENTIALS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    remove_repository_credentials(cache_dir)


def remove_repository_credentials(cache_dir: Path) -> None:
    """Remove what KIWI wrote into its credentials directories of the shared cache.

    Called while this build holds the package cache (locks.lock_cache), so another build's files
    are never touched: the directories hold only credentials files KIWI wrote for this build.
    """
    for relative in CREDENTIALS_DIRS:
        directory = cache_dir / relative
        if not directory.is_dir() or directory.is_symlink():
            continue
        for entry in directory.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink()


def execute(build: KiwiInvocation, log_path: Path, on_phase: Callable[[str], None],
        secrets: Sequence[str] = ()) -> None:
    """Run the build, reporting KIWI's phases to ``on_phase`` (from another thread) as their
    markers appear.  Raises a typed error on failure or interrupt.

    A signal (signals.py) is forwarded to KIWI as the SIGINT a terminal's Ctrl-C would send:
    KIWI unwinds its mounts on KeyboardInterrupt.  Its output is read to the end meanwhile, then
    whatever KIWI left running (apt-get, dpkg, maintainer scripts) is stopped and reaped and
    whatever it left mounted or attached is released, before Interrupted is raised.
    """
    build.prepare_esp_fallback()
    redact = runner.Redactor(secrets)
    with open(log_path, "w", encoding="utf-8") as log, signals.handled(), signals.deferred():
        runner.adopt_orphans()
        process = runner.Process(build.command(), stdout=runner.PIPE, stderr=runner.STDOUT,
                                 env=build.environment(), forward=signal.SIGINT, grace=STOP_GRACE)
        # The log is followed in a thread: KIWI's children (apt-get, dpkg, gpg-agent) hold its
        # output open, and must not keep us waiting once KIWI itself has exited.
        follower = _Follower(process, log, redact, on_phase)
        try:
            with process:  # leaving it stops and reaps what KIWI left running
                follower.start()
                returncode = process.wait()
        finally:
            if follower.is_alive():  # not started if kiwi-ng could not be
                follower.join()
            # Whatever KIWI left (killed mid-step, or a bug), nothing stays mounted or attached.
            cleanup.release(build.target_dir)
            if build.esp_fallback_dir:
                cleanup.release(build.esp_fallback_dir)
        stopped_by = signals.received()
        if stopped_by:
            raise Interrupted(f"build stopped by {signal.Signals(stopped_by).name}; KIWI's "
                              "mounts and loop devices were released and no output was published",
                              f"KIWI's log: {log_path}")
    if returncode != 0:
        raise classify(follower.error, returncode, log_path)


class _Follower(threading.Thread):
    """Logs KIWI's output, reports its phases, and keeps its ERROR line (name, message)."""

    def __init__(self, process: runner.Process, log: TextIO, redact: runner.Redactor,
                 on_phase: Callable[[str], None]):
        super().__init__(daemon=True)
        self.process, self.log, self.redact, self.on_phase = process, log, redact, on_phase
        self.error: tuple[str, str] | None = None

    def run(self) -> None:
        phase_index = -1
        for raw in _lines(self.process.stdout):
            line = self.redact(raw)
            self.log.write(line + "\n")
            match = ERROR_LINE.search(line)
            if match:
                self.error = (match.group(1), match.group(2).strip())
            for index, (marker, name) in enumerate(PHASES):
                if index > phase_index and "[ INFO" in line and marker in line:
                    phase_index = index
                    if not signals.received():
                        self.on_phase(name)
                    break


def _lines(stream):
    """Lines split on \\n and \\r (KIWI's progress bars rewrite one line with \\r)."""
    pending = b""
    while chunk := stream.read1(65536):
        pending += chunk
        *complete, pending = re.split(rb"[\r\n]", pending)
        for line in complete:
            if line:
                yield line.decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


def classify(error: tuple[str, str] | None, returncode: int, log_path: Path) -> Exception:
    """Map KIWI's exception name (its one ERROR line) to our typed error."""
    where = f"full log: {log_path}"
    if not error:
        return BuildError(f"kiwi-ng exited with {returncode} without an error line", where)
    name, message = error
    text = message.lower()
    if "401" in text or "unauthorized" in text or "403" in text and "forbidden" in text:
        return CredentialsError(f"{name}: {message}", f"check the repository credentials; {where}")
    if name in ("KiwiRepositorySetupError", "KiwiUriOpenError", "KiwiDebianBootstrapError") or any(
            hint in text for hint in ("could not resolve", "failed to fetch", "temporary failure",
                                      "connection refused", "timed out", "unable to fetch")):
        return RepositoryError(f"{name}: {message}", f"check --mirror/--repo reachability; {where}")
    return BuildError(f"{name}: {message}", where)
