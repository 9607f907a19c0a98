"""The build host as KIWI meets it: its distribution, which targets it can build natively, the
kiwi-ng it runs, whether its kernel mounts vfat.  What a build requires of it, and the words
for what is missing, are in requirements.py.
"""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path

from . import os_release, runner
from ..core.errors import HostError

KIWI_INSTALL = "run ./setup.sh, or pip install 'kiwi==11.1.*'"

# Hosts that can bootstrap a zypper image: KIWI installs the image's first packages with the
# host's own rpm and zypper, so the host's rpm must write the database format the image's rpm
# reads.  SUSE 15 (Leap 15.x, SLES/SLED 15) has rpm 4.14 with the ndb backend and no sqlite;
# rpm >= 4.16 elsewhere (Debian 12: 4.18) writes sqlite only ("invalid %_db_backend: ndb").
# SUSE 16 moved to a newer rpm with sqlite: a SUSE 16 image is built on a SUSE 16 host, whose
# rpm and zypper are the image's own.  KIWI's doc/source/troubleshooting/buildhost_constraints.rst:
# the build host should match the target; OSInside/kiwi#1834 is an Ubuntu host failing on Leap.
SUSE_HOSTS = ("opensuse-leap", "sles", "sled")


def build_host_problem(target, os_release_path: str = os_release.OS_RELEASE) -> str | None:
    """Why this host cannot build ``target`` natively, or None when it can."""
    if target.package_manager != "zypper":
        return None
    generation = target.chosen.generation
    host = os_release.os_release(os_release_path)
    if host.get("ID") in SUSE_HOSTS and host.get("VERSION_ID", "").split(".")[0] == str(generation):
        return None
    here = tool_version(["rpm", "--version"]).replace("RPM version ", "") if shutil.which("rpm") else ""
    why = ("SUSE 15's rpm 4.14 reads only ndb databases, which rpm 4.16 and later "
           f"(Debian 12: 4.18{', here: ' + here if here else ''}) cannot write"
           if generation == 15 else
           "the host's rpm and zypper must be SUSE 16's own (KIWI's build host constraints)")
    return (f"{target.title} builds on a SUSE {generation} host (Leap {generation}.x, SLES "
            f"{generation}), not on {host.get('PRETTY_NAME', 'this host')}: KIWI installs the "
            f"image's packages with the host's rpm, and {why}")


def container_command(target) -> str:
    release = f" --release {target.release.name}" if target.release else ""
    return f"sudo tdx-image build {target.name}{release} --container"


def kiwi_command() -> str:
    """kiwi-ng beside this Python (the project venv) first, then on PATH."""
    beside = Path(sys.executable).parent / "kiwi-ng"
    found = str(beside) if beside.exists() else shutil.which("kiwi-ng")
    if not found:
        raise HostError("kiwi-ng is not installed", KIWI_INSTALL)
    return found


def kiwi_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kiwi")
    except PackageNotFoundError:
        return "unknown"


def kernel_mounts_vfat(filesystems: str = "/proc/filesystems") -> bool:
    """True when the running kernel has vfat built in or as a loadable module."""
    try:
        if "vfat" in Path(filesystems).read_text().split():
            return True
    except OSError:
        pass
    modules = Path("/lib/modules") / platform.release() / "kernel" / "fs" / "fat"
    return any(modules.glob("vfat.ko*")) and shutil.which("modprobe") is not None


def tool_version(command: list[str]) -> str:
    """The first line a program prints about its version, or "unknown"."""
    lines = runner.probe(command).strip().splitlines()
    return lines[0] if lines else "unknown"
