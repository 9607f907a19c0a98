"""``tdx-image doctor``: can this machine build images, and can it run them as TDs?

Every check reports ok, warn (works, with a caveat or for some targets only) or fail; the
command exits non-zero (HostError's code) when a check of the selected sections fails, so a
script can ask ``tdx-image doctor --only build`` before building.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from . import hostcheck
from .boot import kvm_failure
from .errors import HostError, TdxImageError
from .launch import (OVMF_CODE, QEMU, TDVF_CANDIDATES, cpu_vendor, find_tdvf, kvm_tdx_enabled,
                     qemu_has_tdx_guest, qemu_version)
from .repos import check_reachable, load_credentials
from .targets import TARGETS

REPOSITORY_TIMEOUT = 10.0
OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    section: str  # "build" or "tdx"
    name: str
    status: str
    detail: str


def build_checks(build_dir: Path) -> list[Check]:
    def check(name: str, status: str, detail: str) -> Check:
        return Check("build", name, status, detail)

    checks = [check("root", OK, "running as root") if os.geteuid() == 0
              else check("root", FAIL, "not root: KIWI needs root for loop devices and chroots")]
    try:
        command = hostcheck.require_kiwi()
        checks.append(check("kiwi", OK, f"kiwi {hostcheck.kiwi_version()} ({command})"))
    except HostError as error:
        checks.append(check("kiwi", FAIL, str(error)))
    checks.append(tools_check("host tools", hostcheck.DISK_TOOLS, FAIL))
    for manager, tools in hostcheck.PACKAGE_MANAGER_TOOLS.items():
        users = [name for name, target in TARGETS.items() if target.package_manager == manager]
        if any(hostcheck.build_host_problem(TARGETS[name]) for name in users):
            continue  # not a host for these targets at all: the SUSE targets check says why
        checks.append(tools_check(f"{manager} tools ({', '.join(users)})", tools, WARN))
    checks.append(check("loop devices", OK, "/dev/loop-control present")
                  if os.path.exists("/dev/loop-control")
                  else check("loop devices", FAIL, "no /dev/loop-control: the kernel has no loop devices"))
    checks.append(vfat_check())
    checks.append(suse_host_check())
    checks.append(free_space_check(build_dir))
    checks.append(tools_check("boot test", {QEMU: "qemu-system-x86", "qemu-img": "qemu-utils"}, WARN,
                              extra_missing=() if OVMF_CODE.exists() else (f"{OVMF_CODE} (ovmf)",)))
    with ThreadPoolExecutor(max_workers=len(TARGETS)) as pool:
        checks += list(pool.map(repository_check, TARGETS))
    return checks


def tools_check(name: str, tools: dict[str, str], status_if_missing: str,
                extra_missing: tuple[str, ...] = ()) -> Check:
    missing = hostcheck.missing_tools(tools)
    absent = [f"{tool} ({package})" for tool, package in sorted(missing.items())] + list(extra_missing)
    if absent:
        return Check("build", name, status_if_missing, "missing: " + ", ".join(absent))
    return Check("build", name, OK, ", ".join(sorted(tools)))


def vfat_check() -> Check:
    if hostcheck.kernel_mounts_vfat():
        return Check("build", "vfat (EFI partition)", OK, "the kernel mounts vfat")
    missing = hostcheck.missing_tools(hostcheck.ESP_FALLBACK_TOOLS)
    if missing:
        return Check("build", "vfat (EFI partition)", FAIL,
                     "the kernel cannot mount vfat and the mtools fallback is missing: "
                     + ", ".join(sorted(missing)) + " (apt-get install mtools)")
    return Check("build", "vfat (EFI partition)", WARN,
                 "the kernel cannot mount vfat: the EFI partition is written with mtools instead")


def suse_host_check() -> Check:
    """Leap and SLES build natively only on SUSE 15; elsewhere in their own container."""
    name = "SUSE targets (leap, sles)"
    problem = hostcheck.build_host_problem(TARGETS["leap"])
    if problem is None:
        return Check("build", name, OK, "a SUSE 15 host: leap and sles build natively")
    engines = [engine for engine in ("podman", "docker") if shutil.which(engine)]
    how = (f"build with --container ({engines[0]} is installed): "
           f"{hostcheck.container_command(TARGETS['leap'])}" if engines
           else "install podman (apt-get install podman runc) and build with --container")
    return Check("build", name, WARN, f"{problem}; {how}")


def free_space_check(build_dir: Path) -> Check:
    name = f"free disk ({build_dir})"
    try:
        hostcheck.require_free_space(build_dir)
    except HostError as error:
        return Check("build", name, FAIL, error.message)
    probe = build_dir
    while not probe.exists():
        probe = probe.parent
    return Check("build", name, OK, f"{shutil.disk_usage(probe).free / 1024**3:.1f} GiB free")


def repository_check(target_name: str) -> Check:
    name = f"repositories: {target_name}"
    target = TARGETS[target_name]
    try:
        repositories = target.repositories(None)
        carried = next((repo.credentials for repo in repositories if repo.credentials), None)
        check_reachable(repositories, carried or load_credentials(None), REPOSITORY_TIMEOUT)
    except TdxImageError as error:
        # A target whose repositories are out of reach can still be built with --mirror.
        return Check("build", name, WARN, str(error))
    return Check("build", name, OK, f"{len(repositories)} reachable")


def tdx_checks() -> list[Check]:
    def check(name: str, ok: bool, detail: str) -> Check:
        return Check("tdx", name, OK if ok else FAIL, detail)

    vendor = cpu_vendor()
    tdx = kvm_tdx_enabled()
    kvm_problem = kvm_failure()
    version, has_tdx_guest = qemu_version(), qemu_has_tdx_guest()
    tdvf = find_tdvf()
    return [
        check("CPU", vendor == "GenuineIntel",
              vendor if vendor == "GenuineIntel" else f"{vendor}: TDX needs an Intel Xeon with TDX"),
        check("kvm_intel tdx", tdx == "Y",
              "tdx=Y" if tdx == "Y" else f"tdx={tdx}, needs Y" if tdx
              else "kvm_intel not loaded (no /sys/module/kvm_intel/parameters/tdx)"),
        check("KVM", kvm_problem is None,
              "a UEFI guest runs under KVM" if kvm_problem is None
              else f"{kvm_problem}; boot tests fall back to software emulation"),
        check("QEMU tdx-guest", has_tdx_guest,
              f"QEMU {version} has the tdx-guest object" if has_tdx_guest
              else f"QEMU {version or '(not installed)'} has no tdx-guest object (needs QEMU >= 10.1)"),
        check("TDVF firmware", tdvf is not None,
              f"{tdvf} carries TDX metadata" if tdvf
              else "none with TDX metadata in " + ", ".join(map(str, TDVF_CANDIDATES))),
    ]


def print_table(checks: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {OK: "green", WARN: "yellow", FAIL: "red"}
    table = Table("host", "check", "status", "detail")
    for item in checks:
        table.add_row(item.section, item.name, f"[{colours[item.status]}]{item.status}[/]",
                      item.detail)
    Console(width=max(shutil.get_terminal_size().columns, 120)).print(table)


@click.command("doctor")
@click.option("--only", type=click.Choice(["build", "tdx"]),
              help="Check only the build host or only the TDX host.")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where builds will write (free space is checked there).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor_command(only, build_dir, as_json):
    """Check this machine: can it build images, and can it run them as TDs?"""
    checks = (build_checks(build_dir) if only != "tdx" else []) + (tdx_checks() if only != "build" else [])
    failed = [f"{item.section}: {item.name}" for item in checks if item.status == FAIL]
    report = {"ok": not failed, "checks": [asdict(item) for item in checks]}
    if failed and as_json:  # the CLI prints the checks with the error as one document
        raise HostError(f"{len(failed)} check(s) failed: {', '.join(failed)}",
                        "see the checks", details=report)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_table(checks)
    if failed:
        raise HostError(f"{len(failed)} check(s) failed: {', '.join(failed)}",
                        "see the table above")
