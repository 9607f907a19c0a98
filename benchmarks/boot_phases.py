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

from imagebuilder.boot import boot_image, console_text  # noqa: E402

# (phase, the console text that ends it)
MARKERS = (
    ("firmware (OVMF to boot option)", "BdsDxe:"),
    ("boot loader (shim, GRUB menu, loading kernel+initrd)", "Linux version"),
    ("kernel (to starting the initrd)", "Run /init"),
    ("initrd (to switching root)", "Starting initrd-switch-root.service"),
    ("system units (to the self-check line)", "TDX-SELFCHECK {"),
)


def boot_phases(image: Path, accel: str, work: Path) -> tuple[dict[str, float], float]:
    console_log = work / f"{image.stem}.console.log"
    result: dict = {}

    def boot() -> None:
        try:
            result["boot"] = boot_image(image, accel=accel, console_log=console_log, timeout=600)
        except BaseException as error:  # reported by the main thread
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


def report(images: list[Path], accel: str) -> None:
    """Boot each image in turn and print its phases; the first is the yardstick for the others."""
    work = Path(tempfile.mkdtemp(prefix="tdx-image-boot-bench-"))
    runs = [(image, *boot_phases(image.resolve(), accel, work)) for image in images]
    print(f"console logs in {work}; accel {accel}; host clock per phase, seconds")
    print(f"{'phase':<56}" + "".join(f"{image.name[:22]:>24}" for image, *_ in runs))
    for phase, _ in MARKERS:
        print(f"{phase:<56}" + "".join(f"{phases[phase]:>24.1f}" for _, phases, _ in runs))
    print(f"{'total to self-check':<56}" + "".join(f"{total:>24.1f}" for *_, total in runs))
    base_image, _, base = runs[0]
    for image, _, total in runs[1:]:
        print(f"{image}: {total / base:.2f}x the yardstick {base_image} ({total:.1f} s vs {base:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    args = parser.parse_args()
    report(args.images, args.accel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
