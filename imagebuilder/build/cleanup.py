"""Release what an interrupted or failed KIWI run can leave on the host: mounts below its
working directory, mounts of loop devices backed by files there, and those loop devices."""

from __future__ import annotations

from pathlib import Path

from ..host import runner

PROC_MOUNTS = "/proc/mounts"
SYS_BLOCK = Path("/sys/block")


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def mounts() -> list[tuple[str, str]]:
    """(source, mount point) pairs, in mount order."""
    try:
        lines = Path(PROC_MOUNTS).read_text().splitlines()
    except OSError:
        return []
    return [(_unescape(parts[0]), _unescape(parts[1]))
            for parts in (line.split() for line in lines) if len(parts) >= 2]


def loop_devices_under(directory: Path) -> list[str]:
    """Loop devices whose backing file lies below ``directory``."""
    root = str(directory.resolve())
    found = []
    for backing in SYS_BLOCK.glob("loop*/loop/backing_file"):
        try:
            path = backing.read_text().strip().removesuffix(" (deleted)")
        except OSError:
            continue
        if path == root or path.startswith(root + "/"):
            found.append("/dev/" + backing.parent.parent.name)
    return found


def leftovers(directory: Path) -> tuple[list[str], list[str]]:
    """(mount points, loop devices) that belong to work below ``directory``."""
    root = str(directory.resolve())
    loops = loop_devices_under(directory)
    held = [point for source, point in mounts()
            if point == root or point.startswith(root + "/")
            or any(source == loop or source.startswith(loop + "p") for loop in loops)]
    return held, loops


def release(directory: Path) -> None:
    """Runs to its end whatever signal arrives: it is how an interrupted build leaves."""
    held, loops = leftovers(directory)
    for point in reversed(held):  # innermost first
        runner.run(["umount", "--lazy", point], forward=None)
    for loop in loops:
        # Partitions added with partx outlive the detach; the next build handed this loop
        # device would then fail with "partx: error adding partitions".
        runner.run(["partx", "--delete", loop], forward=None)
        runner.run(["losetup", "--detach", loop], forward=None)
