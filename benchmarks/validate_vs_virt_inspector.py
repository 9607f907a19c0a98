#!/usr/bin/env python3
"""Validator benchmark: ``tdx-image validate`` vs libguestfs ``virt-inspector`` on one image.

Both read the same image in the same run; the figures are wall-clock seconds of the whole
command, as a user would wait for it.  virt-inspector boots its own appliance (here under TCG,
LIBGUESTFS_BACKEND=direct) to inspect the guest; tdx-image validate reads only the qcow2 clusters
its checks need and parses GPT, FAT, ext4 and the initrd itself.  Goal: validate <= 1 s and >= 20x
faster.

Usage: python benchmarks/validate_vs_virt_inspector.py IMAGE.qcow2   (no root needed)
On a host without a kernel in /boot (containers), libguestfs' appliance needs one: export
SUPERMIN_KERNEL=.../vmlinuz-VERSION SUPERMIN_KERNEL_VERSION=VERSION SUPERMIN_MODULES=.../modules/VERSION
(e.g. from the image's own root) and create an empty /lib/modules.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
GOAL_SECONDS, GOAL_SPEEDUP = 1.0, 20.0


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds (user + system, what a busy shared host does not inflate) and result."""
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return time.monotonic() - started, cpu, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    image = parser.parse_args().image.resolve()

    validate_s, validate_cpu, validate = timed([sys.executable, "-m", "imagebuilder", "validate", str(image), "--json"])
    if validate.returncode not in (0, 1):
        print(f"tdx-image validate could not read the image:\n{validate.stderr}", file=sys.stderr)
        return 2
    report = json.loads(validate.stdout)

    # KVM fails on these hosts (see notes/build-host.md); libguestfs would try it first and hang.
    inspector_env = {**os.environ, "LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    inspector_s, inspector_cpu, inspector = timed(["virt-inspector", "--format=qcow2" if image.suffix == ".qcow2" else "--format=raw",
                                    "-a", str(image)], env=inspector_env)
    if inspector.returncode != 0:
        print(f"virt-inspector failed:\n{inspector.stderr[-2000:]}", file=sys.stderr)
        return 2

    speedup = inspector_s / validate_s
    print(f"image:                  {image} ({image.stat().st_size / 2**20:.0f} MiB on disk)")
    print(f"tdx-image validate:     {validate_s:6.2f} s  (ok={report['ok']}, {len(report['checks'])} checks, "
          f"reported {report['duration_s']} s, {validate_cpu:.2f} s CPU)")
    print(f"virt-inspector:         {inspector_s:6.2f} s  ({len(inspector.stdout)} bytes of XML, "
          f"{inspector_cpu:.2f} s CPU incl. its appliance QEMU)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"speed-up:               {speedup:6.1f} x")
    met = validate_s <= GOAL_SECONDS and speedup >= GOAL_SPEEDUP
    print(f"goal (<= {GOAL_SECONDS:.0f} s, >= {GOAL_SPEEDUP:.0f} x): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
