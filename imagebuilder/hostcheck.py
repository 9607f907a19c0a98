"""What the build host must offer before a KIWI run is worth starting.

Every check raises a HostError naming what is missing and how to get it, so a build fails in
its first second rather than twenty minutes in.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import HostError

KIWI_SERIES = "11.1."
# Free space the staging area needs: the image root (~1.5 GiB), the raw disk (4 GiB, sparse
# but written), the qcow2 and headroom.
MIN_FREE_BYTES = 8 * 1024**3

# Host commands KIWI runs for a disk image, and the Debian package that has each.
DISK_TOOLS = {
    "sgdisk": "gdisk",
    "mkfs.vfat": "dosfstools",
    "mkfs.ext4": "e2fsprogs",
    "rsync": "rsync",
    "qemu-img": "qemu-utils",
    "losetup": "mount",
    "blkid": "util-linux",
}
PACKAGE_MANAGER_TOOLS = {
    "apt": {"apt-get": "apt", "dpkg-deb": "dpkg"},
    "zypper": {"zypper": "zypper", "rpm": "rpm"},
}
ESP_FALLBACK_TOOLS = {"mcopy": "mtools", "mdir": "mtools", "mdeltree": "mtools"}

# Hosts that can bootstrap a zypper image: KIWI installs the image's first packages with the
# host's own rpm and zypper, so the host's rpm must write the database format the image's rpm
# reads.  SUSE 15 (Leap 15.x, SLES/SLED 15) has rpm 4.14 with the ndb backend and no sqlite;
# rpm >= 4.16 elsewhere (Debian 12: 4.18) writes sqlite only ("invalid %_db_backend: ndb").
# KIWI's doc/source/troubleshooting/buildhost_constraints.rst: the build host should match
# the target; OSInside/kiwi#1834 is an Ubuntu host failing on Leap.
SUSE_15_HOSTS = ("opensuse-leap", "sles", "sled")
OS_RELEASE = "/etc/os-release"


def os_release(path: str = OS_RELEASE) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return fields
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip('"\'')
    return fields


def build_host_problem(target, os_release_path: str = OS_RELEASE) -> str | None:
    """Why this host cannot build ``target`` natively, or None when it can."""
    if target.package_manager != "zypper":
        return None
    host = os_release(os_release_path)
    if host.get("ID") in SUSE_15_HOSTS and host.get("VERSION_ID", "").split(".")[0] == "15":
        return None
    here = tool_version(["rpm", "--version"]).replace("RPM version ", "") if shutil.which("rpm") else ""
    return (f"{target.title} builds on a SUSE 15 host (Leap 15.x, SLES 15), not on "
            f"{host.get('PRETTY_NAME', 'this host')}: KIWI installs the image's packages with the "
            "host's rpm, and SUSE 15's rpm 4.14 reads only ndb databases, which rpm 4.16 and later "
            f"(Debian 12: 4.18{', here: ' + here if here else ''}) cannot write")


def container_command(target) -> str:
    release = f" --release {target.release.name}" if target.release else ""
    return f"sudo tdx-image build {target.name}{release} --container"


def require_build_host(target, os_release_path: str = OS_RELEASE) -> None:
    problem = build_host_problem(target, os_release_path)
    if problem:
        raise HostError(problem, f"build in the target's own container: {container_command(target)}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise HostError("building an image needs root (KIWI creates loop devices, mounts and chroots)",
                        "run it again with sudo")


def kiwi_command() -> str:
    """kiwi-ng beside this Python (the project venv) first, then on PATH."""
    beside = Path(sys.executable).parent / "kiwi-ng"
    found = str(beside) if beside.exists() else shutil.which("kiwi-ng")
    if not found:
        raise HostError("kiwi-ng is not installed", "run ./setup.sh, or pip install 'kiwi==11.1.*'")
    return found


def kiwi_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kiwi")
    except PackageNotFoundError:
        return "unknown"


def require_kiwi() -> str:
    command = kiwi_command()
    found = kiwi_version()
    if found != "unknown" and not found.startswith(KIWI_SERIES):
        raise HostError(f"kiwi {found} found, tdx-image needs kiwi {KIWI_SERIES}x",
                        "pip install 'kiwi==11.1.*' in the project venv")
    return command


def missing_tools(tools: dict[str, str]) -> dict[str, str]:
    return {tool: package for tool, package in tools.items() if not shutil.which(tool)}


def require_tools(tools: dict[str, str]) -> None:
    missing = missing_tools(tools)
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise HostError(f"host tools missing: {', '.join(sorted(missing))}",
                        f"apt-get install {packages}")


def kernel_mounts_vfat(filesystems: str = "/proc/filesystems") -> bool:
    """True when the running kernel has vfat built in or as a loadable module."""
    try:
        if "vfat" in Path(filesystems).read_text().split():
            return True
    except OSError:
        pass
    modules = Path("/lib/modules") / platform.release() / "kernel" / "fs" / "fat"
    return any(modules.glob("vfat.ko*")) and shutil.which("modprobe") is not None


def require_free_space(path: Path, needed: int = MIN_FREE_BYTES) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise HostError(
            f"only {free / 1024**3:.1f} GiB free at {probe}, a build needs {needed / 1024**3:.0f} GiB",
            "free some space or choose another --out")


def tool_version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"
