"""What the host must offer, as data: one list of requirements, each with what needs it, a probe
and what to do when it is missing.

The same list is asked by ``build`` before it starts (the first requirement missing is a
HostError with the requirement's hint), by ``run --tdx`` and ``boot`` (everything a TD lacks,
in one error), and by ``doctor``, which shows every requirement with the same words.

``needed_for`` names the purposes: ``build`` (every build), ``build:apt`` / ``build:zypper``
(targets of that package manager), ``build:uki`` / ``build:verity`` (a release whose boot chain is
the UKI, and one that seals its root), ``container`` (a build in the target's container), ``boot``
(starting QEMU: the boot test, ``run --exec``), ``boot:uefi`` (a plain UEFI VM's firmware),
``boot:tpm`` (the software TPM), ``tdx`` (a trust domain), ``kvm`` (KVM acceleration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import buildhost, virt
from .facts import HostFacts
from ..core.errors import HostError, InputError
from ..core.results import FAIL, Finding, Result, status_of
from ..distros.targets import TARGETS, Target

KIWI_SERIES = "11.1."
# Free space the staging area needs: the image root (~1.5 GiB), the raw disk (4 GiB, sparse
# but written), the qcow2 and headroom.
MIN_FREE_BYTES = 8 * 1024**3
# Host commands KIWI runs for a disk image (their packages: runner.TOOLS).
DISK_TOOLS = ("sgdisk", "mkfs.vfat", "mkfs.ext4", "rsync", "qemu-img", "losetup", "blkid")
APT_TOOLS = ("apt-get", "dpkg-deb")
# What writes the EFI partition when the kernel cannot mount vfat (hostshim/esp-shim).
ESP_FALLBACK_TOOLS = ("mcopy", "mdir", "mdeltree")
# What the UKI chain's disk hook (overlays/tdx/uki.sh) runs on the build host besides DISK_TOOLS
# to find the disk's partitions and their mounts; VERITY_TOOLS when it seals the root.
UKI_TOOLS = ("lsblk", "findmnt")
VERITY_TOOLS = ("veritysetup",)
QEMU_TOOLS = (virt.QEMU, "qemu-img")
LOOP_CONTROL = "/dev/loop-control"
TD_HINT = "run tdx-image doctor on a TDX host"


@dataclass(frozen=True)
class Context:
    """What a verb is about to do, as far as the probes care, and the host it asks."""

    host: HostFacts = field(default_factory=HostFacts)
    build_dir: Path = Path(".")  # where a build writes (free space)
    target: Target | None = None  # the target to build (None: a SUSE one, for doctor)
    firmware: Path | None = None  # --firmware: TDVF for a TD, UEFI firmware for a plain VM


@dataclass(frozen=True)
class Requirement:
    id: str
    needed_for: tuple[str, ...]
    probe: Callable[[Context], Finding]
    hint: str | Callable[[Context], str]  # what to do when the probe does not pass

    def evaluate(self, context: Context, severity: str = FAIL, group: str = "") -> Result:
        finding = self.probe(context)
        hint = "" if finding.passed else self.hint if isinstance(self.hint, str) else self.hint(context)
        return Result(self.id, status_of(finding, severity), finding.detail, hint, severity, group)


def on_tools(id: str, needed_for: tuple[str, ...], names: tuple[str, ...]) -> Requirement:
    """Host programs that must be on PATH; the hint installs those missing."""
    def probe(context: Context) -> Finding:
        missing = context.host.missing(names)
        if len(missing) == 1:
            return Finding(False, f"{missing[0]} is not installed")
        if missing:
            return Finding(False, f"host tools missing: {', '.join(missing)}")
        return Finding(True, ", ".join(sorted(names)))

    return Requirement(id, needed_for, probe, lambda context: context.host.install_hint(*context.host.missing(names)))


def root(context: Context) -> Finding:
    if context.host.is_root:
        return Finding(True, "running as root")
    return Finding(False, "building an image needs root (KIWI creates loop devices, mounts and chroots)")


def kiwi(context: Context) -> Finding:
    try:
        command = context.host.kiwi_command
    except HostError as error:
        return Finding(False, error.message)
    found = context.host.kiwi_version
    if found != "unknown" and not found.startswith(KIWI_SERIES):
        return Finding(False, f"kiwi {found} found, tdx-image needs kiwi {KIWI_SERIES}x")
    return Finding(True, f"kiwi {found} ({command})")


def loop_devices(context: Context) -> Finding:
    if context.host.has_device(LOOP_CONTROL):
        return Finding(True, f"{LOOP_CONTROL} present")
    return Finding(False, f"no {LOOP_CONTROL}: the kernel has no loop devices")


def vfat(context: Context) -> Finding:
    if context.host.mounts_vfat:
        return Finding(True, "the kernel mounts vfat")
    missing = context.host.missing(ESP_FALLBACK_TOOLS)
    if missing:
        return Finding(False, "the kernel cannot mount vfat and the mtools fallback is missing: "
                       + ", ".join(missing))
    return Finding(True, "the kernel cannot mount vfat: the EFI partition is written with mtools "
                   "instead", warning=True)


def suse_host(context: Context) -> Finding:
    target = context.target or TARGETS["leap"]
    problem = context.host.build_host_problem(target)
    return Finding(problem is None, problem or f"a SUSE {target.chosen.generation} host: its "
                   "leap and sles releases build natively")


def container_hint(context: Context) -> str:
    return f"build in the target's own container: {buildhost.container_command(context.target or TARGETS['leap'])}"


def free_space(context: Context) -> Finding:
    probe = context.build_dir
    while not probe.exists():
        probe = probe.parent
    free = context.host.free_bytes(probe)
    if free < MIN_FREE_BYTES:
        return Finding(False, f"only {free / 1024**3:.1f} GiB free at {probe}, a build needs "
                              f"{MIN_FREE_BYTES / 1024**3:.0f} GiB")
    return Finding(True, f"{free / 1024**3:.1f} GiB free at {probe}")


def uefi_firmware(context: Context) -> Finding:
    if context.firmware is not None:
        return Finding(True, f"{context.firmware} (--firmware)")
    found = context.host.ovmf
    if found is None:
        return Finding(False, "no UEFI firmware (OVMF) in "
                       + ", ".join(str(code) for code, _ in virt.OVMF_CANDIDATES))
    return Finding(True, f"{found.code}, variables {found.variables}")


def intel_cpu(context: Context) -> Finding:
    vendor = context.host.cpu_vendor
    if vendor != "GenuineIntel":
        return Finding(False, f"{vendor}: TDX needs an Intel Xeon with TDX")
    return Finding(True, vendor)


def kvm_intel_tdx(context: Context) -> Finding:
    tdx = context.host.kvm_tdx
    if not tdx:
        return Finding(False, f"kvm_intel is not loaded: no {virt.KVM_TDX_PARAMETER}")
    return Finding(tdx == "Y", f"kvm_intel has tdx={tdx}" + (", needs tdx=Y" if tdx != "Y" else ""))


def kvm_device(context: Context) -> Finding:
    if context.host.has_device(virt.KVM_DEVICE):
        return Finding(True, f"{virt.KVM_DEVICE} present")
    return Finding(False, f"{virt.KVM_DEVICE} is missing")


def qemu_tdx_guest(context: Context) -> Finding:
    version = context.host.qemu_version
    if context.host.qemu_has_tdx_guest:
        return Finding(True, f"QEMU {version} has the tdx-guest object")
    return Finding(False, f"QEMU {version} has no tdx-guest object (needs QEMU >= 10.1)" if version
                   else f"{virt.QEMU} is not installed")


def tdvf(context: Context) -> Finding:
    if context.firmware is not None and not context.host.is_tdvf(context.firmware):
        return Finding(False, f"{context.firmware} is not TDVF (no TDX metadata)")
    found = context.firmware or context.host.tdvf
    if found is None:
        return Finding(False, "no TDVF firmware in " + ", ".join(map(str, virt.TDVF_CANDIDATES)))
    note = context.host.td_firmware_note(found)
    if note:  # a TD still runs: a warning, not a missing requirement
        return Finding(True, f"TDX metadata, but {note}", warning=True)
    return Finding(True, f"{found} carries TDX metadata and TdTcg2Dxe (the boot is measured into RTMRs)")


def kvm(context: Context) -> Finding:
    problem = context.host.kvm_failure
    if problem:
        return Finding(False, f"{problem}; boot tests fall back to software emulation")
    return Finding(True, "a UEFI guest runs under KVM")


# In the order they are checked (a build stops at the first missing) and doctor shows them.
REQUIREMENTS = (
    Requirement("root", ("build", "container"), root, "run it again with sudo"),
    Requirement("kiwi", ("build",), kiwi, buildhost.KIWI_INSTALL),
    on_tools("host tools", ("build",), DISK_TOOLS),
    on_tools("apt tools (debian)", ("build:apt",), APT_TOOLS),
    on_tools("UKI disk hook tools", ("build:uki",), UKI_TOOLS),
    on_tools("veritysetup (--root verity)", ("build:verity",), VERITY_TOOLS),
    Requirement("loop devices", ("build",), loop_devices, "modprobe loop"),
    Requirement("vfat (EFI partition)", ("build",), vfat,
                lambda context: context.host.install_hint(*ESP_FALLBACK_TOOLS)),
    # KIWI bootstraps a zypper image with the host's zypper and rpm: SUSE 15 has both.
    Requirement("SUSE targets (leap, sles)", ("build:zypper",), suse_host, container_hint),
    Requirement("free disk", ("build",), free_space, "free some space or choose another --out"),
    on_tools("QEMU", ("boot",), QEMU_TOOLS),
    on_tools("swtpm", ("boot:tpm",), ("swtpm",)),
    Requirement("UEFI firmware", ("boot:uefi",), uefi_firmware,
                lambda context: f"{context.host.firmware_install_hint()}, or pass --firmware FILE"),
    Requirement("CPU", ("tdx",), intel_cpu, ""),
    Requirement("kvm_intel tdx", ("tdx",), kvm_intel_tdx, "a TDX host kernel and BIOS"),
    Requirement("KVM device", ("tdx",), kvm_device, ""),
    Requirement("QEMU tdx-guest", ("tdx",), qemu_tdx_guest, ""),
    Requirement("TDVF firmware", ("tdx",), tdvf,
                lambda context: "" if context.firmware
                else f"{context.host.firmware_install_hint()}, a release with TDX support"),
    Requirement("KVM", ("kvm",), kvm, "enable virtualisation (VT-x) for this host: nested or partial virtualisation "
                "does not do"),
)
PURPOSES = frozenset(purpose for requirement in REQUIREMENTS for purpose in requirement.needed_for)


def selected(*names: str) -> list[Requirement]:
    """The requirements named, or needed for the purposes named, in the list's order."""
    unknown = set(names) - PURPOSES - {requirement.id for requirement in REQUIREMENTS}
    assert not unknown, f"no such requirement or purpose: {unknown}"
    return [requirement for requirement in REQUIREMENTS
            if requirement.id in names or set(requirement.needed_for) & set(names)]


def evaluate(*names: str, context: Context | None = None) -> list[Result]:
    context = context or Context()
    return [requirement.evaluate(context) for requirement in selected(*names)]


def require(*names: str, context: Context | None = None) -> None:
    """The first requirement of those named that the host does not meet is a HostError."""
    context = context or Context()
    for requirement in selected(*names):
        result = requirement.evaluate(context)
        if result.failed:
            raise HostError(result.detail, result.hint)


def problem(result: Result) -> str:
    return f"{result.detail} ({result.hint})" if result.hint else result.detail


def tdx_host_problems(firmware: Path | None, host: HostFacts) -> list[str]:
    """What this host lacks to launch a TD with ``firmware`` (None: search the usual paths)."""
    return [problem(result) for result in evaluate("tdx", context=Context(host, firmware=firmware))
            if result.failed]


def require_tdx_host(firmware: Path | None, host: HostFacts) -> Path:
    """The TDVF to launch with, or a HostError naming everything the host lacks."""
    if firmware is not None:
        virt.require_firmware_volume(firmware)
    problems = tdx_host_problems(firmware, host)
    found = firmware or host.tdvf
    if problems or found is None:
        raise HostError("this host cannot run a TD: " + "; ".join(problems or ["no TDVF firmware"]),
                        TD_HINT)
    return found


def require_ovmf(requested: Path | None, host: HostFacts,
                 secure_boot: bool = False) -> virt.Firmware | None:
    """A plain UEFI VM's firmware: the one asked for (--firmware), else the host's OVMF (its
    Secure Boot build with ``secure_boot``)."""
    if requested is not None:
        if secure_boot:
            raise InputError("--secure-boot chooses the firmware itself", "drop --firmware")
        return virt.firmware_for(requested)
    require("boot:uefi", context=Context(host))
    if not secure_boot:
        return host.ovmf
    firmware = host.secure_boot_ovmf
    if firmware is None:
        raise HostError(f"no Secure Boot OVMF ({' and '.join(map(str, virt.OVMF_SECURE_BOOT))})",
                        host.firmware_install_hint())
    return firmware
