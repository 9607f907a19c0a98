"""Facts read from one disk image, each read once and only when a check asks for it.

A fact that cannot be established raises ``Unavailable`` with the reason; the checks that depend
on it are then reported as skipped (and a skipped fail-severity check keeps the image from passing).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ..core.errors import InputError
from ..core.inputs import parse_json, read_text
from .bootconfig import GrubConfig, MenuEntry, parse_grub_config, parse_grubenv, parse_kernel_config
from .initrd import InitrdError, initrd_members
from .disk import ESP_TYPE, LINUX_ROOT_TYPES, Disk, Gpt, Partition, read_gpt
from .filesystems import Ext4, Fat, FilesystemError
from .uki import Uki, UkiError, read_uki

MANIFEST_IN_IMAGE = "/usr/lib/tdx-image/overlay-manifest.json"
MANIFEST_MAX_BYTES = 16 * 2**20  # a manifest lists a few hundred overlay files
ESP_LOADER = "/EFI/BOOT/BOOTX64.EFI"
ESP_GRUB_CONFIG = "/EFI/BOOT/grub.cfg"
ROOT_GRUB_CONFIGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")


def _module_name(path: str) -> str:
    """``nvme_core`` of ``kernel/drivers/nvme/host/nvme-core.ko.xz``: the kernel reads - as _."""
    return path.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_")


class Unavailable(Exception):
    """A fact a check needs could not be established; the message says why."""


class Inspection:
    def __init__(self, disk: Disk, manifest: Path | None = None):
        self.disk = disk
        self.manifest_file = manifest
        if manifest is not None:
            self.manifest  # a bad --manifest is the user's input error, reported before any check

    @cached_property
    def gpt(self) -> Gpt:
        return read_gpt(self.disk)

    @cached_property
    def partitions(self) -> list[Partition]:
        if not self.gpt.partitions:
            raise Unavailable("no intact GPT")
        return self.gpt.partitions

    @cached_property
    def esp_partition(self) -> Partition:
        esp = next((part for part in self.partitions if part.type_guid == ESP_TYPE), None)
        if esp is None:
            raise Unavailable("no EFI system partition")
        return esp

    @cached_property
    def esp(self) -> Fat:
        try:
            return Fat(self.disk, self.esp_partition.offset)
        except FilesystemError as error:
            raise Unavailable(f"EFI system partition is not a readable FAT file system: {error}")

    @cached_property
    def esp_grub_config(self) -> GrubConfig | None:
        """The ESP's grub.cfg, which names the root file system; None without one (or without ESP)."""
        try:
            text = self.esp.read(ESP_GRUB_CONFIG)
        except Unavailable:
            return None
        return parse_grub_config(text.decode(errors="replace")) if text is not None else None

    @cached_property
    def uki(self) -> Uki | None:
        """The ESP's default loader when it is a unified kernel image (it has a .linux section):
        then it, not grub, names the kernel, initrd, command line and root.  None otherwise."""
        try:
            data = self.esp.read(ESP_LOADER)
        except Unavailable:
            return None
        try:
            uki = read_uki(data) if data is not None else None
        except UkiError:
            return None
        return uki if uki is not None and ".linux" in uki.sections else None

    @cached_property
    def kernel_cmdline(self) -> str:
        """The command line the kernel gets: the UKI's .cmdline, else grub's default entry's."""
        return self.uki.cmdline if self.uki is not None else self.boot_entry.cmdline

    @cached_property
    def kernel_arguments(self) -> dict[str, str]:
        """``name=value`` words of the command line (the kernel and systemd take the last one)."""
        return dict(word.split("=", 1) for word in self.kernel_cmdline.split() if "=" in word)

    def partition_named(self, device: str) -> Partition | None:
        """The partition a ``PARTUUID=`` device of the command line names (None for others)."""
        wanted = device.removeprefix("PARTUUID=").lower() if device.startswith("PARTUUID=") else None
        return next((part for part in self.partitions
                     if wanted and str(part.unique_guid) == wanted), None)

    @cached_property
    def root_partition(self) -> tuple[Partition, Ext4]:
        """The ext4 file system the UKI's command line names by PARTUUID (root=, or a verity
        root's data device), or the ESP's grub.cfg searches for by UUID; else the only
        candidate (as systemd-gpt-auto-generator finds a root by its partition type)."""
        wanted_partition = None
        if self.uki is not None:
            arguments = self.kernel_arguments
            device = arguments.get("systemd.verity_root_data", arguments.get("root", ""))
            wanted_partition = self.partition_named(device)
            if wanted_partition is None and device.startswith("PARTUUID="):
                raise Unavailable(f"the UKI's command line names no partition of this disk as its root ({device})")
        wanted = self.esp_grub_config.search_uuid if self.esp_grub_config else ""
        candidates, problems = [], []
        for part in self.partitions:
            if part.type_guid not in LINUX_ROOT_TYPES or wanted_partition not in (None, part):
                continue
            try:
                candidates.append((part, Ext4(self.disk, part.offset)))
            except FilesystemError as error:
                problems.append(f"{part.describe()}: {error}")
        for part, fs in candidates:
            if not wanted or fs.uuid == wanted:
                return part, fs
        looked_for = f"ext4 file system with UUID {wanted}" if wanted else "readable ext4 file system"
        raise Unavailable("; ".join([f"no {looked_for} among the Linux partitions", *problems]))

    @property
    def root(self) -> Ext4:
        return self.root_partition[1]

    @cached_property
    def grub_config(self) -> tuple[str, GrubConfig]:
        esp_config = self.esp_grub_config
        paths = (esp_config.configfile,) if esp_config and esp_config.configfile else ROOT_GRUB_CONFIGS
        for path in paths:
            text = self.root.read(path)
            if text is not None:
                grubenv = self.root.read(str(Path(path).with_name("grubenv"))) or b""
                return path, parse_grub_config(text.decode(errors="replace"),
                                               parse_grubenv(grubenv.decode(errors="replace")))
        raise Unavailable(f"no grub configuration at {' or '.join(paths)} in the root file system")

    @cached_property
    def boot_entry(self) -> MenuEntry:
        path, config = self.grub_config
        entry = config.default_entry()
        if entry is None or not entry.kernel:
            raise Unavailable(f"{path}: default entry {config.default!r} does not start a kernel")
        return entry

    @cached_property
    def kernel_version(self) -> str:
        if self.uki is not None:
            if not self.uki.uname:
                raise Unavailable("the UKI has no .uname section: its kernel's version is unknown")
            return self.uki.uname
        name = Path(self.boot_entry.kernel).name
        for prefix in ("vmlinuz-", "vmlinux-", "bzImage-"):
            if name.startswith(prefix):
                return name.removeprefix(prefix)
        raise Unavailable(f"cannot tell the kernel version from {self.boot_entry.kernel}")

    @cached_property
    def kernel_config(self) -> dict[str, str]:
        path = f"/boot/config-{self.kernel_version}"
        text = self.root.read(path)
        if text is None:
            raise Unavailable(f"{path} is missing: the kernel's configuration cannot be checked")
        return parse_kernel_config(text.decode(errors="replace"))

    @cached_property
    def module_tree(self) -> str:
        """The kernel's module directory in the root file system (merged /usr first)."""
        for base in ("/usr/lib/modules", "/lib/modules"):
            path = f"{base}/{self.kernel_version}"
            if self.root.listdir(path) is not None:
                return path
        raise Unavailable(f"no /usr/lib/modules/{self.kernel_version} or "
                          f"/lib/modules/{self.kernel_version} in the root file system")

    def installed_modules(self, subtree: str) -> dict[str, str]:
        """Module name (``tdx_guest``) -> path of each ``.ko`` file, compressed or not, below
        ``subtree`` of the module tree (e.g. ``kernel/drivers/virt``).  SUSE splits one kernel's
        modules over kernel-default, -extra and -optional (supported.conf), so a ``=m`` in the
        config does not prove the file was installed; Debian ships them all."""
        found: dict[str, str] = {}
        pending = [f"{self.module_tree}/{subtree}"]
        while pending:
            directory = pending.pop()
            for name, entry in sorted((self.root.listdir(directory) or {}).items()):
                if entry.is_dir:
                    pending.append(f"{directory}/{name}")
                elif entry.is_file and ".ko" in name:
                    found[name.split(".ko")[0].replace("-", "_")] = f"{directory}/{name}"
        return found

    @cached_property
    def initrd_modules(self) -> set[str]:
        """Module names (``virtio_blk``; ``-`` read as ``_``, as the kernel does) the initrd
        carries for its kernel: the UKI's .initrd, or the default grub entry's initrd files."""
        modules = set()
        for path, data in self._initrds():
            try:
                members = initrd_members(data)
            except InitrdError as error:
                raise Unavailable(f"initrd {path} cannot be read: {error}")
            marker = f"lib/modules/{self.kernel_version}/"
            modules |= {_module_name(member) for member in members
                        if marker in member and ".ko" in member}
        return modules

    @cached_property
    def builtin_modules(self) -> set[str]:
        """Module names built into the kernel, from its module tree's ``modules.builtin`` (one
        ``kernel/drivers/.../name.ko`` a line, written by the kernel's build)."""
        text = self.root.read(f"{self.module_tree}/modules.builtin")
        if text is None:
            raise Unavailable(f"no {self.module_tree}/modules.builtin")
        return {_module_name(line) for line in text.decode(errors="replace").split()}

    @cached_property
    def module_dependencies(self) -> dict[str, list[str]]:
        """Module name -> the modules it needs loaded first, all of them (depmod writes the
        closure into the module tree's ``modules.dep``: ``path: dependency paths``)."""
        text = self.root.read(f"{self.module_tree}/modules.dep")
        if text is None:
            raise Unavailable(f"no {self.module_tree}/modules.dep")
        dependencies = {}
        for line in text.decode(errors="replace").splitlines():
            module, _, needs = line.partition(":")
            dependencies[_module_name(module)] = [_module_name(path) for path in needs.split()]
        return dependencies

    def _initrds(self) -> list[tuple[str, bytes]]:
        if self.uki is not None:
            if ".initrd" not in self.uki.sections:
                raise Unavailable("the UKI has no .initrd section")
            return [(f"{ESP_LOADER} .initrd", self.uki.sections[".initrd"])]
        if not self.boot_entry.initrds:
            raise Unavailable("the default boot entry loads no initrd")
        found = []
        for path in self.boot_entry.initrds:
            data = self.root.read(path)
            if data is None:
                raise Unavailable(f"initrd {path} is missing")
            found.append((path, data))
        return found

    @cached_property
    def manifest(self) -> dict[str, dict[str, str]] | None:
        """The overlay manifest's files: from ``--manifest`` if given, else the image's own (or None)."""
        text: str | bytes | None
        if self.manifest_file is not None:
            text = read_text(self.manifest_file, "--manifest", MANIFEST_MAX_BYTES)
            source = str(self.manifest_file)
        else:
            text = self.root.read(MANIFEST_IN_IMAGE)
            if text is None:
                return None
            source = MANIFEST_IN_IMAGE
        try:
            files = parse_json(text)["files"]
            return {path: {"sha256": spec["sha256"], "mode": spec["mode"]} for path, spec in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            if self.manifest_file is not None:
                raise InputError(f"--manifest {self.manifest_file}: not an overlay manifest ({error!r})")
            raise Unavailable(f"{source} is not an overlay manifest ({error!r})")
