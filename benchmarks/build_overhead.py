#!/usr/bin/env python3
"""Build benchmark (root; reaches the Debian mirror; about 25 minutes on 2 cores).  Prints, from one run,
each figure with its ratio against the yardstick measured in the same run:

1. overhead: bare ``kiwi-ng system build`` vs ``tdx-image build --no-incremental`` on the same
   composed description, both with a warm package cache, alternated twice (goal: <= 3 %);
2. incremental: a cold build (empty package and root cache) and a clean rebuild
   (``--no-incremental``, warm package cache) vs an incremental rebuild after an overlay-only change
   (goal: <= 0.5x cold); the two images' package lists must be identical;
3. compression: the built disk as a zlib and a zstd compressed qcow2 (size, convert, validate);
4. size: the image root by directory (and kernel modules, docs, locales) vs ``--baseline IMAGE``;
5. boot: console phases to the self-check under TCG, vs ``--baseline IMAGE`` booted in the same run.

The bare run uses the exact command ``tdx-image build --dry-run`` prints, with the same
environment the driver gives KIWI (including the ESP fallback on kernels without vfat), so the
difference is the driver: checks, composition, log filtering, publishing and validation.

Usage: sudo .venv/bin/python benchmarks/build_overhead.py [--target debian] [--baseline IMAGE]
       [--only overhead,incremental,compression,size,boot] [--image IMAGE (for compression, size, boot)]
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
from contextlib import closing
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

sys.path.insert(0, str(PROJECT / "benchmarks"))

import boot_phases  # noqa: E402
from imagebuilder.build import cleanup, kiwi  # noqa: E402
from imagebuilder.build.pipeline import BuildRequest, compose_description  # noqa: E402
from imagebuilder.core.defaults import DEFAULT_CACHE_DIR  # noqa: E402
from imagebuilder.distros.targets import get_target  # noqa: E402
from imagebuilder.validate import validate_image  # noqa: E402
from imagebuilder.image.disk import open_disk  # noqa: E402
from imagebuilder.image.inspection import Inspection  # noqa: E402


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


def bare_kiwi(plan: dict, description: Path, work: Path, log: Path) -> tuple[float, int]:
    """The dry run's command on ``description`` (the dry run composes in a directory it removes)."""
    command = list(plan["command"])
    target_dir = work / "bare-kiwi"
    command[command.index("--description") + 1] = str(description)
    command[command.index("--target-dir") + 1] = str(target_dir)
    invocation = kiwi.KiwiInvocation(kiwi=command[0], description=description, target_dir=target_dir,
                                      cache_dir=DEFAULT_CACHE_DIR, repositories=[],
                                      esp_fallback_dir=work / "esp" if plan["esp_fallback"] else None)
    invocation.prepare_esp_fallback()
    try:
        return timed(command, env=invocation.environment(), log=log)
    finally:
        cleanup.release(work)


def overhead(args, work: Path) -> None:
    plan = json.loads(subprocess.run(tdx_image(PROJECT, "build", args.target, "--dry-run", "--json"),
                                     capture_output=True, text=True, check=True).stdout)
    description = work / "description"
    compose_description(BuildRequest(target=get_target(args.target), out_dir=work / "driver"),
                        description)
    # Warm the shared cache once so both sides of the first comparison start alike.
    timed(tdx_image(PROJECT, "build", args.target, "--out", work / "warmup", "--no-incremental"),
          log=work / "warmup.log")
    # Alternate the two, ROUNDS times each, so drift in mirror or machine load hits both alike.
    bare_runs, driver_runs = [], []
    for round_ in range(ROUNDS):
        shutil.rmtree(work / "bare-kiwi", ignore_errors=True)
        bare_runs.append(bare_kiwi(plan, description, work, work / f"bare-{round_}.log"))
        driver_runs.append(timed(tdx_image(PROJECT, "build", args.target, "--out", work / "driver",
                                           "--no-incremental"), log=work / f"driver-{round_}.log"))
    bare, driver = mean(bare_runs), mean(driver_runs)
    print(f"\n== overhead\n{'run':<52}{'wall s':>9}{'peak RSS MiB':>14}")
    for name, (seconds, rss) in ((f"bare kiwi-ng, same description (mean of {ROUNDS})", bare),
                                 (f"tdx-image build --no-incremental (mean of {ROUNDS})", driver)):
        print(f"{name:<52}{seconds:>9.1f}{rss:>14}")
    print(f"single runs, bare: {[round(r[0], 1) for r in bare_runs]}, "
          f"driver: {[round(r[0], 1) for r in driver_runs]}")
    print(f"driver / bare kiwi-ng: {driver[0] / bare[0]:.3f} ({(driver[0] - bare[0]) / bare[0] * 100:+.1f} %, goal <= 3 %)")
    record = json.loads((work / "driver" / "build.json").read_text())["durations_s"]
    print(f"driver's own steps (build.json): {json.dumps({k: v for k, v in record.items() if k != 'kiwi_phases'})}")


def incremental_rebuild(args, work: Path) -> Path:
    """Cold, clean and incremental builds of a project copy; returns the incremental build's image."""
    project = work / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns(".venv", ".git", "out"))
    cache = work / "cold-cache"

    def build(name: str, *options: str) -> tuple[tuple[float, int], dict]:
        result = timed(tdx_image(project, "build", args.target, "--out", work / name, "--cache-dir", cache,
                                 *options), log=work / f"{name}.log")
        return result, json.loads((work / name / "build.json").read_text())

    cold, cold_record = build("cold")
    clean, _ = build("clean", "--no-incremental")
    (project / "overlays" / "tdx" / "root" / "etc" / "tdx-image-benchmark").write_text("overlay-only change\n")
    warm, warm_record = build("warm")
    same_packages = [path.read_text() for path in (*(work / "cold").glob("*.packages"), *(work / "warm").glob("*.packages"))]
    print(f"\n== incremental\n{'run':<58}{'wall s':>9}{'peak RSS MiB':>14}")
    for name, (seconds, rss) in (("cold build (empty package and root cache)", cold),
                                 ("clean rebuild (--no-incremental, warm package cache)", clean),
                                 ("incremental rebuild after an overlay-only change", warm)):
        print(f"{name:<58}{seconds:>9.1f}{rss:>14}")
    print(f"build.json: cold incremental={cold_record['incremental']}, warm incremental={warm_record['incremental']} "
          f"({warm_record['incremental_reason']})")
    print(f"package lists of cold and incremental images identical: {len(same_packages) == 2 and same_packages[0] == same_packages[1]}")
    print(f"incremental / cold: {warm[0] / cold[0]:.2f} (goal <= 0.5, stretch 0.25); "
          f"incremental / clean: {warm[0] / clean[0]:.2f}")
    print(f"incremental build's phases: {json.dumps(warm_record['durations_s'])}")
    return next((work / "warm").glob("*.qcow2"))


def compression(image: Path, work: Path) -> None:
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    figures = {}
    for kind in ("zlib", "zstd"):
        out = work / f"disk-{kind}.qcow2"
        started = time.monotonic()
        subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", f"compression_type={kind}",
                        str(raw), str(out)], check=True)
        convert_s = time.monotonic() - started
        validate_s = sorted(timed_validate(out) for _ in range(3))[1]
        figures[kind] = (out.stat().st_size, convert_s, validate_s)
    raw.unlink()
    print(f"\n== qcow2 compression (same disk, qemu-img convert -c)\n{'type':<8}{'MB':>10}{'convert s':>12}{'validate s':>12}")
    for kind, (size, convert_s, validate_s) in figures.items():
        print(f"{kind:<8}{size / 1e6:>10.1f}{convert_s:>12.1f}{validate_s:>12.2f}")
    (zlib_size, zlib_convert, zlib_validate), (zstd_size, zstd_convert, zstd_validate) = figures.values()
    print(f"zstd / zlib: size {zstd_size / zlib_size:.3f}, convert {zstd_convert / zlib_convert:.2f}, "
          f"validate {zstd_validate / zlib_validate:.2f} (validate: median of 3)")


def timed_validate(image: Path) -> float:
    started = time.monotonic()
    validate_image(image)
    return time.monotonic() - started


SIZE_DIRS = ("/usr", "/usr/lib", "/usr/lib/modules", "/usr/lib/x86_64-linux-gnu", "/usr/lib/grub",
             "/usr/lib/firmware", "/usr/share", "/usr/share/doc", "/usr/share/man", "/usr/share/locale",
             "/usr/share/perl", "/usr/bin", "/usr/sbin", "/boot", "/etc", "/var")


def tree_sizes(image: Path) -> dict[str, int]:
    """Bytes of regular files below each of SIZE_DIRS, read with the validator's ext4 reader."""
    with closing(open_disk(image)) as disk:
        root = Inspection(disk).root

        def total(path: str) -> int:
            entries = root.listdir(path) or {}
            return sum(total(f"{path}/{name}") if entry.is_dir else entry.size if entry.is_file else 0
                       for name, entry in entries.items())
        sizes = {path: total(path) for path in SIZE_DIRS}
        sizes["/ (all files)"] = total("")
    return sizes


def size(image: Path, baseline: Path | None) -> None:
    images = [baseline, image] if baseline else [image]
    sizes = [tree_sizes(path) for path in images]
    print(f"\n== image size (MB of file data; qcow2 is the compressed file)\n{'directory':<28}"
          + "".join(f"{path.parent.name + '/' + path.name[:14]:>32}" for path in images)
          + ("   ratio" if baseline else ""))
    rows = [*SIZE_DIRS, "/ (all files)"]
    for row in rows:
        values = [figures[row] for figures in sizes]
        ratio = f"{values[1] / values[0]:>8.2f}" if baseline and values[0] else ""
        print(f"{row:<28}" + "".join(f"{value / 1e6:>32.1f}" for value in values) + ratio)
    files = [path.stat().st_size for path in images]
    print(f"{'qcow2 file':<28}" + "".join(f"{value / 1e6:>32.1f}" for value in files)
          + (f"{files[1] / files[0]:>8.2f}" if baseline else ""))


def boot(image: Path, baseline: Path | None) -> None:
    print("\n== boot phases under TCG (host clock at each console marker)", flush=True)
    boot_phases.report([path for path in (baseline, image) if path], "tcg")


SECTIONS = ("overhead", "incremental", "compression", "size", "boot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="debian")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--baseline", type=Path, help="yardstick image for size and boot")
    parser.add_argument("--image", type=Path, help="image for compression, size and boot "
                        "[default: the incremental section's]")
    args = parser.parse_args()
    sections = args.only.split(",")
    work = Path(tempfile.mkdtemp(prefix="tdx-image-bench-", dir="/var/tmp"))
    print(f"working in {work} (logs kept there)", flush=True)
    image = args.image.resolve() if args.image else None
    if "overhead" in sections:
        overhead(args, work)
    if "incremental" in sections:
        image = image or incremental_rebuild(args, work)
    if image is None and set(sections) & {"compression", "size", "boot"}:
        sys.exit("benchmark: --image is needed without the incremental section")
    if "compression" in sections:
        compression(image, work)
    if "size" in sections:
        size(image, args.baseline)
    if "boot" in sections:
        boot(image, args.baseline)


if __name__ == "__main__":
    main()
