"""The checks, declared as data: id, severity, why it matters for a TD, and a probe for evidence.

A probe returns a Finding (passed or not, and what it saw); if a fact it needs cannot be read it
raises Unavailable and the check is skipped.  Only fail-severity checks decide the verdict.
"""

from __future__ import annotations

import hashlib
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ..core.results import FAIL, INFO, WARN, Finding
from ..distros.clouds import AZURE, GCP, GIB, MIB, QEMU, Cloud
from ..image.cloudformats import GCE_DISK, VHD_FIXED, VHD_FOOTER_SIZE, GceTar, VhdFooter
from ..image.disk import BIOS_BOOT_TYPE, ESP_TYPE, LINUX_ROOT_TYPES
from ..image.inspection import MANIFEST_IN_IMAGE, Inspection, Unavailable
from .sealing import selinux_labels, uki_sections, verity_root, verity_root_read_only

@dataclass(frozen=True)
class Check:
    id: str
    severity: str
    reason: str
    probe: Callable[[Inspection], Finding]
    clouds: tuple[str, ...] = ()  # the clouds (--cloud) it applies to; empty: every one

    def applies_to(self, cloud: Cloud) -> bool:
        return not self.clouds or cloud.name in self.clouds


def gpt_valid(image: Inspection) -> Finding:
    problems = image.gpt.primary.problems + image.gpt.backup.problems
    if problems:
        return Finding(False, "; ".join(problems))
    return Finding(True, f"primary and backup GPT headers and entries intact, {len(image.gpt.partitions)} partitions")


def esp_with_removable_loader(image: Inspection) -> Finding:
    image.partitions  # without a partition table there is nothing to judge
    try:
        esp = image.esp
    except Unavailable as missing:
        return Finding(False, str(missing))
    where = image.esp_partition.describe()
    if esp.exists("/EFI/BOOT/BOOTX64.EFI"):
        return Finding(True, f"{where}: EFI/BOOT/BOOTX64.EFI present")
    return Finding(False, f"{where}: no EFI/BOOT/BOOTX64.EFI")


def no_bios_boot_partition(image: Inspection) -> Finding:
    bios = [part.describe() for part in image.partitions if part.type_guid == BIOS_BOOT_TYPE]
    if bios:
        return Finding(False, f"BIOS boot partition: {', '.join(bios)}")
    kinds = {ESP_TYPE: "EFI system", BIOS_BOOT_TYPE: "BIOS boot", **LINUX_ROOT_TYPES}
    layout = ", ".join(f"{part.number}: {kinds.get(part.type_guid, str(part.type_guid))}" for part in image.partitions)
    return Finding(True, f"partitions {layout}")


def root_filesystem(image: Inspection) -> Finding:
    image.partitions
    try:
        partition, root = image.root_partition
    except Unavailable as missing:
        return Finding(False, str(missing))
    return Finding(True, f"{partition.describe()}: ext4 UUID {root.uuid}")


def default_boot_entry(image: Inspection) -> Finding:
    if image.uki is not None:
        return uki_sections(image)
    root = image.root
    try:
        entry = image.boot_entry
    except Unavailable as missing:
        return Finding(False, str(missing))
    missing_files = [path for path in (entry.kernel, *entry.initrds) if root.lookup(path) is None]
    files = f"linux {entry.kernel}, initrd {' '.join(entry.initrds) or '(none)'}"
    if missing_files:
        return Finding(False, f"{entry.title!r}: {files}; missing in the root file system: {', '.join(missing_files)}")
    return Finding(True, f"{entry.title!r}: {files}")


SERIAL_CONSOLES = ("ttyS", "hvc")


def serial_console(image: Inspection) -> Finding:
    cmdline = image.kernel_cmdline
    consoles = [word.removeprefix("console=") for word in cmdline.split() if word.startswith("console=")]
    evidence = f"kernel command line (measured into RTMR2): {cmdline or '(empty)'}"
    return Finding(any(console.startswith(SERIAL_CONSOLES) for console in consoles), evidence)


def _options(image: Inspection, *names: str) -> str:
    config = image.kernel_config
    return f"/boot/config-{image.kernel_version}: " + ", ".join(
        f"{name}={config.get(name, 'not set')}" for name in names)


def tdx_guest_kernel(image: Inspection) -> Finding:
    return Finding(image.kernel_config.get("CONFIG_INTEL_TDX_GUEST") == "y",
                   _options(image, "CONFIG_INTEL_TDX_GUEST"))


def attestation_drivers(image: Inspection) -> Finding:
    names = ("CONFIG_TDX_GUEST_DRIVER", "CONFIG_TSM_REPORTS")
    return Finding(all(image.kernel_config.get(name) in ("y", "m") for name in names), _options(image, *names))


# Attestation drivers built as modules, by the file names their options make: the TDX guest
# driver (drivers/virt/coco/tdx-guest/tdx-guest.ko) and configfs-tsm (drivers/virt/coco/tsm.ko,
# tsm-report.ko in later kernels).
ATTESTATION_MODULES = {"CONFIG_TDX_GUEST_DRIVER": ("tdx_guest",),
                       "CONFIG_TSM_REPORTS": ("tsm", "tsm_report")}


def attestation_modules_installed(image: Inspection) -> Finding:
    config = image.kernel_config
    wanted = {option: names for option, names in ATTESTATION_MODULES.items()
              if config.get(option) == "m"}
    built_in = [option for option in ATTESTATION_MODULES if config.get(option) == "y"]
    installed = image.installed_modules("kernel/drivers/virt") if wanted else {}
    present, missing = [], []
    for option, names in wanted.items():
        path = next((installed[name] for name in names if name in installed), None)
        if path:
            present.append(path)
        else:
            missing.append(f"{option}=m but no {'/'.join(names)}.ko below {image.module_tree}/kernel/drivers/virt")
    if missing:
        return Finding(False, "; ".join(missing))
    seen = present + [f"{option}=y (built in)" for option in built_in]
    return Finding(True, ", ".join(seen) or "neither driver configured (see kernel.attestation)")


def unaccepted_memory(image: Inspection) -> Finding:
    return Finding(image.kernel_config.get("CONFIG_UNACCEPTED_MEMORY") == "y",
                   _options(image, "CONFIG_UNACCEPTED_MEMORY"))


# What a TD needs to reach its disk and network: any one driver per role, built in or in the initrd.
VIRTIO_ROLES = {
    "block": (("CONFIG_VIRTIO_BLK", "virtio_blk"), ("CONFIG_SCSI_VIRTIO", "virtio_scsi")),
    "PCI": (("CONFIG_VIRTIO_PCI", "virtio_pci"),),
    "net": (("CONFIG_VIRTIO_NET", "virtio_net"),),
}


def virtio_drivers(image: Inspection) -> Finding:
    config, found, absent = image.kernel_config, [], []
    for role, drivers in VIRTIO_ROLES.items():
        sources = [f"{module} built in" for option, module in drivers if config.get(option) == "y"]
        if not sources and any(config.get(option) == "m" for option, _ in drivers):
            sources = [f"{module} in initrd" for option, module in drivers if module in image.initrd_modules]
        if sources:
            found.append(f"{role}: {sources[0]}")
        else:
            absent.append(f"{role}: " + " / ".join(f"{option}={config.get(option, 'not set')}" for option, _ in drivers))
    if absent:
        return Finding(False, "missing from kernel and initrd: " + "; ".join(absent))
    return Finding(True, "; ".join(found))


# The option that builds each driver a cloud needs, from the kernel's Makefiles (obj-$(OPTION)
# += name.o), for a kernel whose module tree has no modules.builtin.
DRIVER_OPTIONS = {"virtio_blk": "CONFIG_VIRTIO_BLK", "virtio_net": "CONFIG_VIRTIO_NET",
                  "nvme": "CONFIG_BLK_DEV_NVME", "gve": "CONFIG_GVE", "hv_vmbus": "CONFIG_HYPERV",
                  "hv_storvsc": "CONFIG_HYPERV_STORAGE", "hv_netvsc": "CONFIG_HYPERV_NET"}


def _built_in(image: Inspection, driver: str) -> str | None:
    """Where the kernel says it has ``driver`` built in (modules.builtin, else its config)."""
    try:
        return "built in (modules.builtin)" if driver in image.builtin_modules else None
    except Unavailable:
        option = DRIVER_OPTIONS.get(driver)
        return f"built in ({option}=y)" if option and image.kernel_config.get(option) == "y" else None


def _dependencies(image: Inspection, driver: str) -> list[str]:
    """The modules ``driver`` needs loaded first (modules.dep); none known without the file."""
    try:
        return image.module_dependencies.get(driver, [])
    except Unavailable:
        return []


def cloud_drivers(cloud: Cloud) -> Callable[[Inspection], Finding]:
    """The probe of ``cloud``'s initrd drivers: each in the initrd the loader hands the kernel
    (the UKI's, else grub's) with the modules it needs, or built into the kernel; a module only
    in the root file system comes too late, as the root is on the disk the driver reaches."""

    def probe(image: Inspection) -> Finding:
        found: list[str] = []
        missing: list[str] = []
        for driver in cloud.initrd_drivers:
            where = "in the initrd" if driver in image.initrd_modules else _built_in(image, driver)
            needs = _dependencies(image, driver) if where == "in the initrd" else []
            lacking = [module for module in needs
                       if module not in image.initrd_modules and not _built_in(image, module)]
            if lacking:
                missing.append(f"{driver} (in the initrd without {' and '.join(lacking)}, which it needs)")
            elif where is None:
                missing.append(f"{driver} (neither in the initrd nor built in)")
            else:
                found.append(f"{driver} {where}" + (f" with {' and '.join(needs)}" if needs else ""))
        if missing:
            return Finding(False, f"the kernel cannot load: {', '.join(missing)}"
                           + (f"; {', '.join(found)}" if found else ""))
        return Finding(True, ", ".join(found))

    return probe


# What KIWI's gce format may put beside disk.raw: its manifest.json (a licence tag).
GCE_OPTIONAL_MEMBERS = ("manifest.json",)
NOT_A_GCE_TAR = "not a gzipped tar: Google Cloud imports a .tar.gz holding disk.raw"


def _gce_tar(image: Inspection) -> GceTar | None:
    return image.disk.packing if isinstance(image.disk.packing, GceTar) else None


def gce_tar_members(image: Inspection) -> Finding:
    tar = _gce_tar(image)
    if tar is None:
        return Finding(False, NOT_A_GCE_TAR)
    listed = ", ".join(member.describe() for member in tar.members)
    names = [member.name for member in tar.members]
    unexpected = [name for name in names if name not in (GCE_DISK, *GCE_OPTIONAL_MEMBERS)]
    problems = [f"unexpected member {name!r}" for name in unexpected]
    if names.count(GCE_DISK) != 1:
        problems.append(f"{names.count(GCE_DISK)} members named {GCE_DISK}")
    problems += [f"{member.name} is a {member.kind}" for member in tar.members
                 if member.kind not in ("file", "GNU sparse file")]
    return Finding(not problems, "; ".join([*problems, f"members: {listed}"]))


def gce_tar_format(image: Inspection) -> Finding:
    tar = _gce_tar(image)
    if tar is None:
        raise Unavailable(NOT_A_GCE_TAR)
    other = [f"{member.name}: {member.format}" for member in tar.members if member.format != "gnu"]
    if other:
        return Finding(False, "not GNU tar headers: " + ", ".join(other))
    return Finding(True, f"GNU tar headers ({len(tar.members)} members), gzip-compressed")


def _size_in_units(size: int) -> str:
    return f"{size} bytes ({size / GIB:.3f} GiB, {size / MIB:.1f} MiB)"


def disk_size(cloud: Cloud) -> Callable[[Inspection], Finding]:
    """The probe of ``cloud``'s size rule: the disk's size (a VHD's: its footer's current size)
    a multiple of ``cloud.size_multiple``."""
    unit = {GIB: "GiB", MIB: "MiB"}.get(cloud.size_multiple, f"{cloud.size_multiple} bytes")

    def probe(image: Inspection) -> Finding:
        packing = image.disk.packing
        size = packing.current_size if isinstance(packing, VhdFooter) else image.disk.size
        what = "the VHD's current size" if isinstance(packing, VhdFooter) else "the raw disk"
        whole = size % cloud.size_multiple == 0
        return Finding(whole, f"{what}: {_size_in_units(size)}"
                       + ("" if whole else f", not a whole number of {unit}"))

    return probe


def vhd_footer(image: Inspection) -> Finding:
    footer = image.disk.packing
    if not isinstance(footer, VhdFooter):
        return Finding(False, "no VHD footer at the end: Azure takes a fixed VHD")
    problems = []
    if footer.disk_type != VHD_FIXED:
        problems.append(f"disk type {footer.type_name}, not fixed")
    if not footer.checksum_ok:
        problems.append(f"checksum {footer.checksum:#010x}, the footer sums to {footer.computed_checksum:#010x}")
    if footer.file_size != footer.current_size + VHD_FOOTER_SIZE:
        problems.append(f"the file is {footer.file_size} bytes, not the current size {footer.current_size} + "
                        f"the {VHD_FOOTER_SIZE}-byte footer")
    seen = f"footer: {footer.type_name}, creator {footer.creator!r}, current size {footer.current_size}, " \
           f"checksum {footer.checksum:#010x}"
    return Finding(not problems, "; ".join([*problems, seen]))


def overlay_files(image: Inspection) -> Finding:
    manifest = image.manifest
    if manifest is None:
        return Finding(False, f"no {MANIFEST_IN_IMAGE} and no --manifest: not built by tdx-image, or the TDX overlay is missing")
    problems = []
    for path, expected in sorted(manifest.items()):
        content, entry = image.root.read(path), image.root.lookup(path)
        if content is None or entry is None or not entry.is_file:
            problems.append(f"{path} missing")
        elif hashlib.sha256(content).hexdigest() != expected["sha256"]:
            problems.append(f"{path} content differs")
        elif stat.S_IMODE(entry.mode) != int(expected["mode"], 8):
            problems.append(f"{path} mode {oct(stat.S_IMODE(entry.mode))}, expected {expected['mode']}")
    if problems:
        return Finding(False, "; ".join(problems))
    return Finding(True, f"all {len(manifest)} overlay files present with the recorded sha256 and mode")


def _lines(content: bytes | None) -> list[str]:
    return content.decode(errors="replace").splitlines() if content else []


def no_passwords(image: Inspection) -> Finding:
    """pam_unix reads the hash from passwd unless that field is "x", then from shadow."""
    passwd = _lines(image.root.read("/etc/passwd"))
    if not passwd:
        raise Unavailable("no /etc/passwd")
    shadow = dict(line.split(":")[:2] for line in _lines(image.root.read("/etc/shadow")) if line.count(":") >= 1)
    unlocked = []
    for line in passwd:
        user, _, field = line.partition(":")
        password = field.split(":")[0]
        hash_ = shadow.get(user, "*") if password == "x" else password
        if hash_ == "":
            unlocked.append(f"{user} (empty password)")
        elif not hash_.startswith(("!", "*")):
            unlocked.append(f"{user} (password set)")
    if unlocked:
        return Finding(False, "accounts that accept a password: " + ", ".join(unlocked))
    return Finding(True, f"all {len(passwd)} accounts locked or without password login")


def no_ssh_host_keys(image: Inspection) -> Finding:
    keys = sorted(name for name in image.root.listdir("/etc/ssh") or {} if name.startswith("ssh_host_") and "key" in name)
    if keys:
        return Finding(False, "baked-in host keys: " + ", ".join(f"/etc/ssh/{key}" for key in keys))
    return Finding(True, "no /etc/ssh/ssh_host_*key*")


def machine_id_unset(image: Inspection) -> Finding:
    found = []
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        content = (image.root.read(path) or b"").strip()
        if content not in (b"", b"uninitialized"):
            found.append(f"{path} = {content[:32].decode(errors='replace')}")
    if found:
        return Finding(False, "; ".join(found))
    return Finding(True, "/etc/machine-id empty or absent: set at first boot")


def _files(image: Inspection, *paths: str) -> list[tuple[str, bytes]]:
    """(path, content) of each regular file named, or inside each directory named (ending in /)."""
    found = []
    for path in paths:
        if path.endswith("/"):
            entries = image.root.listdir(path) or {}
            names = [path + name for name, entry in sorted(entries.items()) if entry.is_file]
        else:
            names = [path]
        found += [(name, content) for name in names if (content := image.root.read(name)) is not None]
    return found


def _matching_lines(files: list[tuple[str, bytes]], pattern: str) -> list[str]:
    """Where a pattern matches, by file and line number: the secret itself is never echoed."""
    regex = re.compile(pattern, re.IGNORECASE)
    return [f"{path}:{number}" for path, content in files
            for number, line in enumerate(_lines(content), 1)
            if regex.search(line) and not line.lstrip().startswith("#")]


URL_WITH_PASSWORD = r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"


def no_repository_credentials(image: Inspection) -> Finding:
    # libzypp keeps a password it finds in a repository URL (KIWI passes --add-repo-credentials
    # that way) in the user's credentials.cat below the root it works on (zypp
    # UrlCredentialExtractor -> CredentialManager::addUserCred: ROOT/$HOME/.zypp/credentials.cat).
    credential_files = [path for path, content in
                        _files(image, "/etc/zypp/credentials.d/", "/etc/zypp/credentials.cat",
                               "/root/.zypp/credentials.cat", "/etc/apt/auth.conf", "/etc/apt/auth.conf.d/")
                        if content.strip()]
    repositories = _files(image, "/etc/apt/sources.list", "/etc/apt/sources.list.d/", "/etc/zypp/repos.d/")
    found = credential_files + [f"user:password@ URL at {where}" for where in _matching_lines(repositories, URL_WITH_PASSWORD)]
    if found:
        return Finding(False, "; ".join(found))
    return Finding(True, f"no credential files; no user:password@ URL in {len(repositories)} repository files")


def no_build_proxy(image: Inspection) -> Finding:
    found = _matching_lines(_files(image, "/etc/environment"), r"^\s*(export\s+)?(https?|ftp|all)_proxy\s*=\s*\S")
    found += _matching_lines(_files(image, "/etc/apt/apt.conf", "/etc/apt/apt.conf.d/"), r"acquire::\w+::proxy\s+\"[^\"]+\"")
    found += _matching_lines(_files(image, "/etc/sysconfig/proxy"), r"^\s*PROXY_ENABLED\s*=\s*\"?yes")
    if found:
        return Finding(False, "proxy settings at " + ", ".join(found))
    return Finding(True, "no proxy in /etc/environment, apt configuration or /etc/sysconfig/proxy")


CHECKS = (
    Check("disk.gpt", FAIL, "TDVF (OVMF for TDX) boots only from a GPT disk; a damaged table may be refused or 'repaired'", gpt_valid),
    Check("disk.esp", FAIL, "TDVF starts EFI/BOOT/BOOTX64.EFI on the EFI system partition: a TD has no NVRAM boot entries", esp_with_removable_loader),
    Check("disk.no-bios-boot", FAIL, "a TD boots only through UEFI; a BIOS boot partition means a legacy boot path was built", no_bios_boot_partition),
    Check("disk.root", FAIL, "the boot loader must find the ext4 root file system it searches for", root_filesystem),
    Check("boot.default-entry", FAIL, "the default grub entry, or the UKI the firmware starts, must carry or name a kernel, "
          "initrd and command line that exist", default_boot_entry),
    Check("boot.serial-console", FAIL, "a TD has no display (-vga none): the serial console is the only boot log", serial_console),
    Check("root.verity", FAIL, "a dm-verity root must verify against its hash tree, whose root hash is the one on the "
          "measured command line: otherwise the TD stops at the first changed block it reads", verity_root),
    Check("root.verity-read-only", FAIL, "nothing may mount a verity root's partition writable: a write would change "
          "the data under the hash tree", verity_root_read_only),
    Check("root.selinux-labels", FAIL, "with SELinux enabled, files need their labels from the build: a dm-verity "
          "root cannot be relabelled at boot, and enforcing mode denies unlabelled files", selinux_labels),
    Check("kernel.tdx-guest", FAIL, "without CONFIG_INTEL_TDX_GUEST=y the kernel cannot run as a trust domain", tdx_guest_kernel),
    Check("kernel.attestation", WARN, "CONFIG_TDX_GUEST_DRIVER and CONFIG_TSM_REPORTS let the TD produce attestation quotes", attestation_drivers),
    Check("kernel.attestation-modules", FAIL, "an attestation driver the kernel builds as a module must be installed: SUSE splits modules over kernel-default, -extra and -optional", attestation_modules_installed),
    Check("kernel.unaccepted-memory", INFO, "CONFIG_UNACCEPTED_MEMORY accepts private memory lazily: large TDs boot fast", unaccepted_memory),
    Check("kernel.virtio", FAIL, "a TD under QEMU/KVM has only virtio devices: block, PCI and net drivers must be built in or in the initrd", virtio_drivers,
          clouds=(QEMU.name,)),
    Check("gcp.initrd-drivers", FAIL, "Google Cloud's Confidential VMs attach the boot disk over NVMe and the NIC as gVNIC: "
          f"without {' and '.join(GCP.initrd_drivers)} in the initrd (or built in) the kernel finds neither its root nor "
          "the network", cloud_drivers(GCP), clouds=(GCP.name,)),
    Check("azure.initrd-drivers", FAIL, "Azure attaches disk and NIC over VMBus behind the paravisor: without "
          f"{', '.join(AZURE.initrd_drivers)} in the initrd (or built in) the kernel finds neither its root nor the network",
          cloud_drivers(AZURE), clouds=(AZURE.name,)),
    Check("gcp.tar-members", FAIL, f"Google Cloud imports a gzipped tar whose disk is the file {GCE_DISK} (beside it at most "
          "KIWI's manifest.json); any other name or member is refused at import", gce_tar_members, clouds=(GCP.name,)),
    Check("gcp.tar-format", FAIL, "Google Cloud's import instructions make the tar with GNU tar (tar --format=oldgnu -S): "
          "GNU headers, the sparse disk as a GNU sparse member", gce_tar_format, clouds=(GCP.name,)),
    Check("gcp.disk-size", FAIL, "Google Cloud imports a disk.raw whose size is a whole number of GiB", disk_size(GCP),
          clouds=(GCP.name,)),
    Check("azure.vhd-footer", FAIL, "Azure takes a fixed VHD: the raw disk then a 512-byte footer of disk type fixed "
          "with a valid checksum, the file exactly the disk's current size + 512 bytes", vhd_footer, clouds=(AZURE.name,)),
    Check("azure.disk-size", FAIL, "Azure refuses a VHD whose virtual size is not a whole number of MiB (qemu-img's vpc "
          "without force_size rounds to a CHS geometry)", disk_size(AZURE), clouds=(AZURE.name,)),
    Check("overlay.files", FAIL, "the TDX overlay (attestation device access, first-boot host keys, self-check) must be installed unchanged", overlay_files),
    Check("secure.passwords", FAIL, "an image shared by many TDs must not carry a usable or empty password", no_passwords),
    Check("secure.ssh-host-keys", FAIL, "baked-in SSH host keys would be shared by every TD started from the image", no_ssh_host_keys),
    Check("secure.machine-id", FAIL, "a baked-in machine-id would give every TD the same identity", machine_id_unset),
    Check("secure.repo-credentials", FAIL, "repository credentials used for the build must not ship in the image", no_repository_credentials),
    Check("secure.proxy", FAIL, "the build host's proxy settings leak its network and break the TD's networking", no_build_proxy),
)
