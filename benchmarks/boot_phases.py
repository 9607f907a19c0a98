#!/usr/bin/env python3
"""Boot benchmark: where the seconds to the self-check go, by phase, from the serial console.

Boots each image with ``tdx-image boot``'s own code (QEMU, OVMF, TCG unless --accel) and stamps
every console line with the host's clock as it appears (the firmware and GRUB print no times of
their own).  Phases end at the first line that matches each marker below.  With two images the
second is compared with the first (the yardstick), booted in the same run.

Usage: .venv/bin/python benchmarks/boot_phases.py [--accel tcg] IMAGE [IMAGE...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from imagebuilder.vm.boot import boot_image, console_text  # noqa: E402

# (phase, the console text that ends it)
MARKERS = (
    ("firmware (OVMF to boot option)", "BdsDxe:"),
    ("boot loader (shim, GRUB menu, loading kernel+initrd)", "Linux version"),
    ("kernel (to starting the initrd)", "Run /init"),
    ("initrd (to switching root)", "Starting initrd-switch-root.service"),
    ("system units (to the self-check line)", "TDX-SELFCHECK {"),
)


def boot_phases(image: Path, accel: str, work: Path) -> tuple[dict[str, float], float]:
    work.mkdir(parents=True, exist_ok=True)
    console_log = work / f"{image.stem}.console.log"
    result: dict = {}

    def boot() -> None:
        try:
            result["boot"] = boot_image(image, accel=accel, console_log=console_log, timeout=600)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, which re-raises it
            result["error"] = error

    started = time.monotonic()
    thread = threading.Thread(target=boot)
    thread.start()
    seen: dict[str, float] = {}
    while thread.is_alive():
        text = console_text(console_log.read_text(errors="replace")) if console_log.exists() else ""
        now = time.monotonic() - started
        for phase, marker in MARKERS:
            if phase not in seen and marker in text:
                seen[phase] = now
        time.sleep(0.05)
    thread.join()
    if "error" in result:
        raise SystemExit(f"boot of {image} failed: {result['error']}")
    text = console_text(console_log.read_text(errors="replace"))
    total = result["boot"].seconds_to_selfcheck
    phases, previous = {}, 0.0
    for phase, marker in MARKERS:
        end = seen.get(phase, total if marker.startswith("TDX") else None)
        if end is None or marker not in text:
            phases[phase] = float("nan")
            continue
        phases[phase], previous = end - previous, end
    return phases, total


def report(images: list[Path], accel: str, rounds: int = 2) -> None:
    """Boot the images in turn, ``rounds`` times in alternating order (A B, B A, ...) so that drift in
    the host's load hits each alike; print each phase's mean.  The first image is the yardstick."""
    work = Path(tempfile.mkdtemp(prefix="tdx-image-boot-bench-"))
    runs: dict[Path, list[tuple[dict[str, float], float]]] = {image: [] for image in images}
    for round_ in range(rounds):
        for image in images if round_ % 2 == 0 else images[::-1]:
            runs[image].append(boot_phases(image.resolve(), accel, work / f"round-{round_}"))
    means = {image: ({phase: sum(r[0][phase] for r in results) / rounds for phase, _ in MARKERS},
                     sum(r[1] for r in results) / rounds) for image, results in runs.items()}
    print(f"console logs in {work}; accel {accel}; host clock per phase, mean of {rounds} boots "
          "(alternating order), seconds")
    print(f"{'phase':<56}" + "".join(f"{image.name[:22]:>24}" for image in images))
    for phase, _ in MARKERS:
        print(f"{phase:<56}" + "".join(f"{means[image][0][phase]:>24.1f}" for image in images))
    print(f"{'total to self-check':<56}" + "".join(f"{means[image][1]:>24.1f}" for image in images))
    print("single totals: " + "; ".join(f"{image.name}: {[round(r[1], 1) for r in runs[image]]}" for image in images))
    base = means[images[0]][1]
    for image in images[1:]:
        total = means[image][1]
        print(f"{image}: {total / base:.2f}x the yardstick {images[0]} ({total:.1f} s vs {base:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    args = parser.parse_args()
    report(args.images, args.accel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
