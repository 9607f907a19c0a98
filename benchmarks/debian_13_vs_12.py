#!/usr/bin/env python3
"""Benchmark: debian 13 (UKI started by the firmware, dm-verity root) against debian 12 (shim +
grub, writable root), from one run.  Prints, per image, with the ratio against debian 12:

1. build: the published build.json's total (less any wait for another build's package cache) and
   KIWI seconds, and whether the prepared root was reused (from the builds given);
2. size: the published disk file, its virtual size and what the root file system holds;
3. boot: seconds to the self-check under TCG by console phase (benchmarks/boot_phases.py: the
   images booted in alternating order, mean of --rounds boots), goal for the UKI chain <= 20 s.

Usage: sudo .venv/bin/python benchmarks/debian_13_vs_12.py OUT_13 OUT_12 [--rounds 2]
       OUT_*: the --out directories of `tdx-image build debian` and `... --release 12`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "benchmarks"))

from boot_phases import report as boot_report  # noqa: E402

from imagebuilder.image.disk import open_disk  # noqa: E402
from imagebuilder.image.inspection import Inspection  # noqa: E402

MiB = 2**20


def figures(out: Path) -> dict:
    record = json.loads((out / "build.json").read_text())
    image = out / record["image"]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True,
                                     text=True, check=True).stdout)
    disk = open_disk(image)
    try:
        inspection = Inspection(disk)
        partition, root = inspection.root_partition
        loader = inspection.esp.read("/EFI/BOOT/BOOTX64.EFI") or b""
        chain = "UKI" if inspection.uki is not None else "shim + grub"
        used = root.used_blocks * root.block_size
    finally:
        disk.close()
    return {"image": image, "release": record["target"]["release"], "chain": chain,
            "root": record["inputs"].get("root", "writable"),
            # a wait for another build's package cache is the host's, not this build's
            "build_s": record["durations_s"]["total"] - record["durations_s"].get("wait_for_the_package_cache", 0),
            "kiwi_s": record["durations_s"]["kiwi"], "incremental": record["incremental"],
            "file_mib": image.stat().st_size / MiB, "virtual_mib": info["virtual-size"] / MiB,
            "root_used_mib": used / MiB, "root_partition_mib": partition.size / MiB,
            "loader_mib": len(loader) / MiB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_13", type=Path)
    parser.add_argument("out_12", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    new, old = figures(args.out_13), figures(args.out_12)
    print(f"{'figure':<34}{'debian ' + new['release']:>22}{'debian ' + old['release']:>22}{'ratio':>9}")
    print(f"{'boot chain, root':<34}{new['chain'] + ', ' + new['root']:>22}{old['chain'] + ', ' + old['root']:>22}")
    print(f"{'prepared root reused (incremental)':<34}{new['incremental']!s:>22}{old['incremental']!s:>22}")
    for key, label in (("build_s", "build, without cache waits (s)"), ("kiwi_s", "  of which KIWI (s)"),
                       ("file_mib", "disk file (MiB)"), ("virtual_mib", "virtual disk (MiB)"),
                       ("root_used_mib", "root file system used (MiB)"), ("loader_mib", "ESP loader (MiB)")):
        print(f"{label:<34}{new[key]:>22.1f}{old[key]:>22.1f}{new[key] / old[key]:>9.2f}")
    print()
    boot_report([old["image"], new["image"]], "tcg", args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
