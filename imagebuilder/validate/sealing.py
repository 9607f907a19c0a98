"""Probes of a sealed boot chain: the UKI the firmware starts and the dm-verity root it names.

The root hash is trusted because it is on the UKI's command line, which systemd-stub measures; so
the checks tie the three together offline: the hash tree verifies against the root partition
(image/verity.py, no device-mapper), its root hash equals ``roothash=``, and nothing mounts the
root's partition writable past the verity device.
"""

from __future__ import annotations

import re

from ..core.results import Finding
from ..image.inspection import ESP_LOADER, Inspection
from ..image.uki import REQUIRED_SECTIONS
from ..image.verity import VerityError, read_superblock, verify

VERITY_DEVICE = "/dev/mapper/root"  # what systemd-veritysetup-generator names a roothash= root


def uki_sections(image: Inspection) -> Finding:
    """For a UKI: the sections systemd-stub needs to start the measured kernel, initrd and
    command line (its own ``.cmdline``, so nothing the firmware passes is used)."""
    uki = image.uki
    assert uki is not None
    present = ", ".join(f"{name} {len(uki.sections[name])} B" for name in REQUIRED_SECTIONS
                        if name in uki.sections)
    missing = uki.missing()
    if missing:
        return Finding(False, f"{ESP_LOADER}: UKI without {', '.join(missing)} (has {present})")
    name = uki.os_release.get("PRETTY_NAME", "unknown system")
    return Finding(True, f"{ESP_LOADER}: UKI of {name}, kernel {uki.uname}: {present}")


def _verity_partitions(image: Inspection):
    arguments = image.kernel_arguments
    data = image.partition_named(arguments.get("systemd.verity_root_data", ""))
    hash_partition = image.partition_named(arguments.get("systemd.verity_root_hash", ""))
    return arguments.get("roothash", ""), data, hash_partition


def verity_root(image: Inspection) -> Finding:
    root_hash, data, hash_partition = _verity_partitions(image)
    if not root_hash:
        return Finding(True, "no roothash= on the kernel command line: a writable root (the host can change "
                       "it between boots), no dm-verity tree to verify")
    if data is None or hash_partition is None:
        arguments = image.kernel_arguments
        return Finding(False, "roothash= without data and hash partitions of this disk "
                       f"(systemd.verity_root_data={arguments.get('systemd.verity_root_data', '')!r}, "
                       f"systemd.verity_root_hash={arguments.get('systemd.verity_root_hash', '')!r})")
    where = f"{data.describe()} against {hash_partition.describe()}"
    try:
        superblock = read_superblock(image.disk.read(hash_partition.offset, 4096))
        if superblock.data_blocks * superblock.data_block_size > data.size:
            return Finding(False, f"{where}: the tree covers {superblock.data_blocks} blocks, "
                           f"more than the partition holds")
        verdict = verify(superblock, lambda offset, length: image.disk.read(data.offset + offset, length),
                         lambda offset, length: image.disk.read(hash_partition.offset + offset, length))
    except VerityError as error:
        return Finding(False, f"{where}: {error}")
    if verdict.first_bad_data_block is not None:
        block = verdict.first_bad_data_block
        return Finding(False, f"{where}: data block {block} (byte {block * superblock.data_block_size} "
                       f"of the partition) does not match the hash tree: the root was changed after sealing")
    if verdict.bad_hash_blocks:
        return Finding(False, f"{where}: {verdict.bad_hash_blocks} hash blocks differ from those the data gives")
    if verdict.root_hash != root_hash.lower():
        return Finding(False, f"{where}: the tree's root hash {verdict.root_hash} is not the command line's "
                       f"roothash={root_hash}")
    return Finding(True, f"{where}: {superblock.data_blocks} blocks verify ({superblock.algorithm}); "
                   f"root hash {verdict.root_hash} = roothash= of the measured command line")


def verity_root_read_only(image: Inspection) -> Finding:
    """A verity root is mounted from the verity device, read-only, and nothing else (fstab, a
    root= naming the partition) mounts its data partition: a writable mount would change the
    data under the hash tree, and the next read of a changed block stops the TD."""
    root_hash, data, _ = _verity_partitions(image)
    if not root_hash:
        return Finding(True, "no dm-verity root: nothing to keep read-only")
    words, arguments = image.kernel_cmdline.split(), image.kernel_arguments
    problems = []
    if arguments.get("root") != VERITY_DEVICE:
        problems.append(f"root={arguments.get('root', '(none)')} is not the verity device {VERITY_DEVICE}")
    if "ro" not in words or "rw" in words:
        problems.append("the command line does not mount the root read-only (ro, no rw)")
    fstab = (image.root.read("/etc/fstab") or b"").decode(errors="replace")
    names = {f"PARTUUID={data.unique_guid}", f"UUID={image.root.uuid}"}
    if image.root.label:
        names.add(f"LABEL={image.root.label}")
    for number, line in enumerate(fstab.splitlines(), 1):
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 2 and (
                fields[1] == "/" or fields[0] in names):
            problems.append(f"/etc/fstab:{number} mounts {fields[0]} at {fields[1]}")
    if problems:
        return Finding(False, "; ".join(problems))
    overlay = " under a tmpfs overlay" if arguments.get("systemd.volatile") == "overlay" else ""
    return Finding(True, f"root={VERITY_DEVICE} ro{overlay}; /etc/fstab mounts neither / nor {data.describe()}")



SELINUX_CONFIG = "/etc/selinux/config"
SELINUX_LABEL = "security.selinux"
# What systemd and the first services open before anything could relabel: the root, its top
# directories and everything directly in /etc.  A root labelled only in part elsewhere passes.
SELINUX_SAMPLED = ("/", "/etc")
# A file context as setfiles writes it (user:role:type:level, NUL-terminated); unlabeled_t is
# what the kernel reports for a file without one.
SELINUX_CONTEXT = re.compile(rb"[\w.-]+:[\w.-]+:(\w+)(:[\w.,:-]+)?\0?")


def selinux_labels(image: Inspection) -> Finding:
    """With SELinux enabled in the image (SUSE 16), its files carry their labels from the build:
    a dm-verity root cannot be relabelled at boot, and in enforcing mode an unlabelled file is
    denied to the services that need it."""
    config = image.root.read(SELINUX_CONFIG)
    mode = re.search(rb"^SELINUX=(\w+)", config or b"", re.MULTILINE)
    if mode is None or mode.group(1) == b"disabled":
        return Finding(True, f"SELinux not enabled by {SELINUX_CONFIG}: no labels needed")
    paths = [*SELINUX_SAMPLED]
    for directory in SELINUX_SAMPLED:
        paths += [f"{directory.rstrip('/')}/{name}" for name in sorted(image.root.listdir(directory) or {})]
    unlabelled = []
    for path in dict.fromkeys(paths):
        label = (image.root.xattrs(path) or {}).get(SELINUX_LABEL, b"")
        context = SELINUX_CONTEXT.fullmatch(label)
        if context is None or context.group(1) == b"unlabeled_t":
            unlabelled.append(path)
    sealed = " on a dm-verity root, which cannot be relabelled at boot" if _verity_partitions(image)[0] else ""
    if unlabelled:
        shown = ", ".join(unlabelled[:5]) + (f" and {len(unlabelled) - 5} more" if len(unlabelled) > 5 else "")
        return Finding(False, f"SELINUX={mode.group(1).decode()}, but no SELinux label on {shown}{sealed}")
    return Finding(True, f"SELINUX={mode.group(1).decode()}: {len(dict.fromkeys(paths))} files in / and /etc "
                   f"labelled{sealed}")
