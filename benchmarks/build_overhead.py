#!/usr/bin/env python3
"""Build benchmark (root; reaches the Debian mirror; about 12 minutes on 2 cores).  Prints, from one run:

1. bare ``kiwi-ng system build`` vs ``tdx-image build`` on the same composed description, both
   with a warm package cache, alternated twice (goal: driver overhead <= 3 %);
2. a cold build (empty package cache) vs a warm rebuild after an overlay-only change.

The bare run uses the exact command ``tdx-image build --dry-run`` prints, with the same
environment the driver gives KIWI (including the ESP fallback on kernels without vfat), so the
difference is the driver: checks, composition, log filtering, publishing and validation.

Usage: sudo .venv/bin/python benchmarks/build_overhead.py [--target debian]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from imagebuilder import cleanup, kiwi  # noqa: E402
from imagebuilder.build import DEFAULT_CACHE_DIR  # noqa: E402


ROUNDS = 2


def mean(runs: list[tuple[float, int]]) -> tuple[float, int]:
    return sum(r[0] for r in runs) / len(runs), max(r[1] for r in runs)


def timed(command: list[str], cwd: Path = PROJECT, env: dict | None = None,
          log: Path | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB, the largest process of the tree) of one command."""
    started = time.monotonic()
    with open(log or os.devnull, "w") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"benchmark: {' '.join(command[:4])} failed; see {log}")
    return time.monotonic() - started, usage.ru_maxrss // 1024


def tdx_image(project: Path, *args) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(project)!r}); "
            "from imagebuilder.cli import main; main(prog_name='tdx-image')", *map(str, args)]


def bare_kiwi(plan: dict, work: Path, log: Path) -> tuple[float, int]:
    command = list(plan["command"])
    target_dir = work / "bare-kiwi"
    command[command.index("--target-dir") + 1] = str(target_dir)
    run = kiwi.KiwiRun(kiwi=command[0], description=Path(plan["description"]), target_dir=target_dir,
                       cache_dir=DEFAULT_CACHE_DIR, repositories=[],
                       esp_fallback_dir=work / "esp" if plan["esp_fallback"] else None)
    run.prepare_esp_fallback()
    try:
        return timed(command, env=run.environment(), log=log)
    finally:
        cleanup.release(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="debian")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tdx-image-bench-", dir="/var/tmp"))
    print(f"working in {work} (logs kept there)", flush=True)

    plan = json.loads(subprocess.run(tdx_image(PROJECT, "build", args.target, "--dry-run", "--json"),
                                     capture_output=True, text=True, check=True).stdout)
    # Warm the shared cache once so both sides of the first comparison start alike.
    timed(tdx_image(PROJECT, "build", args.target, "--out", work / "warmup"), log=work / "warmup.log")
    # Alternate the two, ROUNDS times each, so drift in mirror or machine load hits both alike.
    bare_runs, driver_runs = [], []
    for round_ in range(ROUNDS):
        shutil.rmtree(work / "bare-kiwi", ignore_errors=True)
        bare_runs.append(bare_kiwi(plan, work, work / f"bare-{round_}.log"))
        driver_runs.append(timed(tdx_image(PROJECT, "build", args.target, "--out", work / "driver"),
                                 log=work / f"driver-{round_}.log"))
    bare, driver = mean(bare_runs), mean(driver_runs)

    # A copy of the project whose overlay gains one file: an overlay-only change.
    project = work / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns(".venv", ".git", "out"))
    cold_cache = work / "cold-cache"
    cold = timed(tdx_image(project, "build", args.target, "--out", work / "cold",
                           "--cache-dir", cold_cache), log=work / "cold.log")
    marker = project / "overlays" / "tdx" / "root" / "etc" / "tdx-image-benchmark"
    marker.write_text("overlay-only change\n")
    warm = timed(tdx_image(project, "build", args.target, "--out", work / "warm",
                           "--cache-dir", cold_cache), log=work / "warm.log")

    overhead = (driver[0] - bare[0]) / bare[0] * 100
    print(f"\n{'run':<44}{'wall s':>9}{'peak RSS MiB':>14}")
    for name, (seconds, rss) in (
            (f"bare kiwi-ng, same description (mean of {ROUNDS})", bare),
            (f"tdx-image build incl. validation (mean of {ROUNDS})", driver),
            ("cold build (empty package cache)", cold),
            ("warm rebuild after an overlay-only change", warm)):
        print(f"{name:<44}{seconds:>9.1f}{rss:>14}")
    print(f"\nsingle runs, bare: {[round(r[0], 1) for r in bare_runs]}, "
          f"driver: {[round(r[0], 1) for r in driver_runs]}")
    print(f"driver overhead vs bare kiwi-ng: {overhead:+.1f} % (goal <= 3 %)")
    print(f"warm rebuild saves {cold[0] - warm[0]:.1f} s ({(1 - warm[0] / cold[0]) * 100:.0f} %) over cold")
    record = json.loads((work / "driver" / "build.json").read_text())["durations_s"]
    print(f"driver's own steps (build.json): {json.dumps({k: v for k, v in record.items() if k != 'kiwi_phases'})}")


if __name__ == "__main__":
    main()
