"""cleanup.release on a real loop device with partitions, as a killed KIWI leaves it."""

import subprocess
from pathlib import Path

import pytest

from imagebuilder.build import cleanup

pytestmark = pytest.mark.integration


def test_release_removes_partitions_and_detaches(tmp_path):
    disk = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "64M", disk], check=True)
    subprocess.run(["sgdisk", "-n", "1:0:+8M", "-n", "2:0:0", disk], check=True, capture_output=True)
    loop = subprocess.run(["losetup", "-f", "--show", disk], check=True, capture_output=True,
                          text=True).stdout.strip()
    name = Path(loop).name
    try:
        subprocess.run(["partx", "--add", loop], check=True)
        assert sorted(p.name for p in Path("/sys/block", name).glob(f"{name}p*")) == [f"{name}p1", f"{name}p2"]
        cleanup.release(tmp_path)
        assert cleanup.leftovers(tmp_path) == ([], [])
        assert not list(Path("/sys/block", name).glob(f"{name}p*"))
    finally:
        subprocess.run(["partx", "--delete", loop], capture_output=True)
        subprocess.run(["losetup", "--detach", loop], capture_output=True)
