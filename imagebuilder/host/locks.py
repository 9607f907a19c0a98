"""Locks between builds on one host: one per ``--out`` and one per package cache.

A second build into the same ``--out`` refuses at once, naming the build that holds it.  Builds
into different ``--out`` share the package cache (``--cache-dir``): KIWI's package manager locks
its archive directory there, so a build waits, with a message, while another one installs
packages, and takes its turn when that one has finished with the cache.

``flock`` locks die with their process (a killed build never leaves a stale lock); the lock files
stay in ``/run/lock/tdx-image`` (a tmpfs) and hold the pid of the build holding them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from ..core.errors import HostError

LOCK_DIR = Path("/run/lock/tdx-image")


class Lock:
    def __init__(self, kind: str, path: Path):
        self.path = path.resolve()
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:16]
        self.file = LOCK_DIR / f"{kind}-{self.path.name or 'root'}-{digest}.lock"
        self.fd: int | None = None

    def _open(self) -> int:
        try:
            LOCK_DIR.mkdir(parents=True, exist_ok=True)
            return os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise HostError(f"cannot create the lock file {self.file}: {error.strerror}",
                            "builds need root")

    def holder(self) -> str:
        """The pid the lock file names, as text ("unknown" while the holder is writing it)."""
        try:
            return self.file.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def try_acquire(self) -> bool:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._own(fd)
        return True

    def acquire(self) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a signal ends the wait (signals.Interrupt)
        except BaseException:
            os.close(fd)
            raise
        self._own(fd)

    def _own(self, fd: int) -> None:
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()


def lock_out(out_dir: Path) -> Lock:
    """Hold ``out_dir`` for this build, or refuse at once (exit 3) naming the build holding it."""
    lock = Lock("out", out_dir)
    if not lock.try_acquire():
        raise HostError(f"another build (pid {lock.holder()}) is writing to {lock.path}",
                        "wait for it to finish, or choose another --out")
    return lock


def lock_cache(cache_dir: Path, on_wait: Callable[[str], None]) -> Lock:
    """Hold the package cache, waiting (and saying so) while another build installs packages."""
    lock = Lock("cache", cache_dir)
    if not lock.try_acquire():
        on_wait(f"wait for the package cache {lock.path} (build pid {lock.holder()} is using it)")
        lock.acquire()
    return lock
