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
from typing import BinaryIO

from . import cleanup
from ..host import runner, signals
from ..core.errors import BuildError, CredentialsError, HostError, Interrupted, RepositoryError
from ..distros.repos import Repository

# KIWI's image root, below its --target-dir.
IMAGE_ROOT = Path("build/image-root")
HOSTSHIM_DIR = Path(__file__).resolve().parent / "hostshim"
HOSTSHIM = HOSTSHIM_DIR / "esp-shim"
# KIWI's status file for the host's apt-get in the bootstrap, inside the image root
# (hostshim/apt-get says why: the host's dpkg lock).
APT_STATUS = Path("var/lib/dpkg/status.kiwi")
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
APT_CREDENTIALS_DIR = Path("apt-get") / "auth.conf.d"


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
    # KIWI's temporary files and mount points (/var/tmp/kiwi_* by default): in the build's
    # staging, so that whatever a killed KIWI leaves is removed with it.
    temp_dir: Path | None = None

    def command(self) -> list[str]:
        command = [self.kiwi, "--debug", "--shared-cache-dir", str(self.cache_dir)]
        if self.temp_dir:
            command += ["--temp-dir", str(self.temp_dir)]
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
        shims = [HOSTSHIM_DIR]  # its apt-get keeps the bootstrap off the host's dpkg lock
        env["TDX_IMAGE_APT_STATUS"] = str(self.image_root / APT_STATUS)
        if self.esp_fallback_dir:
            shims.insert(0, self.esp_fallback_dir / "bin")
            env["TDX_IMAGE_ESP_STATE"] = str(self.esp_fallback_dir / "state")
        env["PATH"] = ":".join([*map(str, shims), env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        return env

    @property
    def image_root(self) -> Path:
        """The root KIWI installs packages into."""
        return self.prepare_root or self.target_dir / IMAGE_ROOT

    def prepare_esp_fallback(self) -> None:
        if not self.esp_fallback_dir:
            return
        (self.esp_fallback_dir / "state").mkdir(parents=True, exist_ok=True)
        (self.esp_fallback_dir / "bin").mkdir(parents=True, exist_ok=True)
        for name in SHIMMED_COMMANDS:
            link = self.esp_fallback_dir / "bin" / name
            if not link.exists():
                link.symlink_to(HOSTSHIM)


def seal_repository_credentials(cache_dir: Path, aliases: Sequence[str]) -> None:
    """Before KIWI runs: the directory KIWI's zypper writes credentials to exists and is root's
    alone (0700, whatever the umask made of an earlier one), and holds no credentials file a
    killed build left."""
    directory = cache_dir / ZYPPER_CREDENTIALS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    remove_repository_credentials(cache_dir, aliases)


def repository_credentials_files(cache_dir: Path, aliases: Sequence[str]) -> list[Path]:
    """The files KIWI writes credentials to for this build's repositories (named by their
    aliases): zypper's default credentials file (kiwi/system/uri.py ``credentials_file_name``;
    tdx-image never names another with ``?credentials=``) and apt's ``<alias>.conf``."""
    return [cache_dir / ZYPPER_CREDENTIALS_DIR / "kiwiRepoCredentials",
            *(cache_dir / APT_CREDENTIALS_DIR / f"{alias}.conf" for alias in aliases)]


def remove_repository_credentials(cache_dir: Path, aliases: Sequence[str]) -> None:
    """Remove the credentials files KIWI may have written for this build's repositories.

    Called while this build holds the package cache (locks.lock_cache), so no other tdx-image
    build is using them; other files in KIWI's credentials directories are not ours and stay.
    """
    for path in repository_credentials_files(cache_dir, aliases):
        # Only below the cache itself: a directory on the way that is a link elsewhere (the
        # user's --cache-dir may hold anything) leaves the file where it points alone.
        inside = path.parent.resolve() == cache_dir.resolve() / path.parent.relative_to(cache_dir)
        if inside and (path.is_file() or path.is_symlink()):
            path.unlink()


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
    if build.temp_dir:
        build.temp_dir.mkdir(parents=True, exist_ok=True)
    redact = runner.Redactor(secrets)
    # Unbuffered: after a failed write (a full disk) nothing is left to fail again at close.
    with open(log_path, "wb", buffering=0) as log, signals.handled(), signals.deferred():
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
            for place in (build.target_dir, build.esp_fallback_dir, build.temp_dir):
                if place:
                    cleanup.release(place)
        stopped_by = signals.received()
        if stopped_by:
            raise Interrupted(f"build stopped by {signal.Signals(stopped_by).name}; KIWI's "
                              "mounts and loop devices were released and no output was published",
                              f"KIWI's log: {log_path}")
    if follower.log_error is not None:  # the true reason, whatever KIWI made of the full disk
        raise HostError(f"cannot write KIWI's log {log_path}: {follower.log_error.strerror}",
                        "free space there and build again")
    if returncode != 0:
        raise classify(follower.error, returncode, log_path)


class _Follower(threading.Thread):
    """Logs KIWI's output, reports its phases, and keeps its ERROR line (name, message)."""

    def __init__(self, process: runner.Process, log: BinaryIO, redact: runner.Redactor,
                 on_phase: Callable[[str], None]):
        super().__init__(daemon=True)
        self.process, self.log, self.redact, self.on_phase = process, log, redact, on_phase
        self.error: tuple[str, str] | None = None
        self.log_error: OSError | None = None  # the log could not be written (a full disk)

    def run(self) -> None:
        phase_index = -1
        for raw in _lines(self.process.stdout):
            line = self.redact(raw)
            if self.log_error is None:
                try:
                    self.log.write(f"{line}\n".encode())
                except OSError as error:
                    # Read on regardless: KIWI blocks writing to a pipe nobody empties.
                    self.log_error = error
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
    if "could not get lock" in text or "unable to acquire the dpkg" in text:
        # Never a mirror error: another package manager holds a lock KIWI's apt wanted (apt
        # names the holder in the message).
        return HostError(f"{name}: {message}", "another package manager is running; build "
                         f"again when it has finished; {where}")
    if "401" in text or "unauthorized" in text or "403" in text and "forbidden" in text:
        return CredentialsError(f"{name}: {message}", f"check the repository credentials; {where}")
    if name in ("KiwiRepositorySetupError", "KiwiUriOpenError", "KiwiDebianBootstrapError") or any(
            hint in text for hint in ("could not resolve", "failed to fetch", "temporary failure",
                                      "connection refused", "timed out", "unable to fetch")):
        return RepositoryError(f"{name}: {message}", f"check --mirror/--repo reachability; {where}")
    return BuildError(f"{name}: {message}", where)
