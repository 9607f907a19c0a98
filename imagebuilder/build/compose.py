"""Compose the description KIWI builds: the target's description plus the shared TDX overlay.

KIWI has no flag to add an overlay, so the driver writes a temporary description directory:
the target's files, the overlay's ``root/`` tree merged into ``root/`` (KIWI's own overlay
mechanism), and a ``config.sh`` that runs the target's setup and then the overlay's.  The
overlay's files are recorded with their digests inside the image
(``/usr/lib/tdx-image/overlay-manifest.json``) so a validator can prove they are there.
The user's customisations (extra packages, disk size and format, an SSH key for a named user)
are applied to the composed ``config.xml`` with KIWI's own elements; the repository's
description is never changed.  A cloud (``--cloud``, distros/clouds.py) adds its disk format,
its initrd drivers, cloud-init with its datasource alone, and its disk size rule.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError
from ..core.inputs import read_text
from ..distros.clouds import GIB, MIB, QEMU, Cloud, get_cloud

MANIFEST_PATH = "usr/lib/tdx-image/overlay-manifest.json"
# The UKI chain (a description's <type editbootinstall="uki.sh">) is the overlay's: the disk hook
# beside config.sh, and the image files only that chain wants (its dracut and fstab settings).
UKI_HOOK, UKI_ROOT = "uki.sh", "uki-root"
SSH_KEY_MAX_BYTES = 256 * 1024  # an authorized_keys file of a few hundred keys
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519@", "sk-ecdsa-sha2-")
# A cloud's files in the composed root.  dracut installs add_drivers beside the descriptions'
# exclusive drivers= list (debian's 80-tdx-guest-initrd.conf); a module the kernel lacks is only
# logged by dracut (instmods -c, its status unchecked): the build's validation fails the image.
CLOUD_DRACUT_CONF = "etc/dracut.conf.d/85-tdx-image-cloud.conf"
# After Debian's 90_dpkg.cfg (debconf's datasource_list: every datasource cloud-init has):
# cloud-init merges cloud.cfg.d in name order and a later list replaces an earlier one.
CLOUD_INIT_DATASOURCE = "etc/cloud/cloud.cfg.d/99-tdx-image-datasource.cfg"
# The distribution's own first-boot agent: Debian 12/13 and openSUSE Leap / SLES 16.0 all ship it
# under this name (SLES 15: in the Public Cloud module).
CLOUD_INIT_PACKAGE = "cloud-init"


@dataclass(frozen=True)
class Customisation:
    """What a user changes without editing the repository (see imagebuilder/build/settings.py)."""

    packages: tuple[str, ...] = ()
    size_mib: int | None = None  # None: the description's <size>
    image_format: str | None = None  # qcow2, raw or vmdk; None: the description's
    ssh_key: Path | None = None
    ssh_user: str = "root"
    # "verity": a partition for a dm-verity hash tree, which the description's editbootinstall
    # hook (the overlay's uki.sh) fills and whose root hash it puts on the UKI's command line;
    # "writable" or None: the description's plain root (distros.targets says which a release has).
    root: str | None = None
    cloud: str = QEMU.name  # where the image runs (distros/clouds.py); qemu changes nothing

    def __post_init__(self):
        cloud = get_cloud(self.cloud)
        if cloud.kiwi_format and self.image_format:
            raise InputError(f"--format {self.image_format} contradicts --cloud {cloud.name}: "
                             f"{cloud.title} imports KIWI's {cloud.kiwi_format} format",
                             "leave out --format (or the config file's format) with --cloud")
        if self.size_mib:
            check_cloud_size(self.size_mib, cloud)


@dataclass(frozen=True)
class Composition:
    path: Path
    overlay_files: dict[str, dict]  # image path -> {"sha256", "mode"}


def compose(description: Path, overlay: Path, destination: Path,
            custom: Customisation = Customisation()) -> Composition:
    """Write the composed description to ``destination`` (which must not exist)."""
    shutil.copytree(description, destination, symlinks=True)
    _add_uki_chain(destination, overlay)
    overlay_root = overlay / "root"
    files = _overlay_manifest(overlay_root)
    shutil.copytree(overlay_root, destination / "root", symlinks=True, dirs_exist_ok=True)
    manifest = destination / "root" / MANIFEST_PATH
    manifest.write_text(json.dumps({"overlay": overlay.name, "files": files}, indent=2,
                                   sort_keys=True) + "\n")
    fragments: list[tuple[str, Path | str]] = [
        (f"{description.name}/config.sh", description / "config.sh"),
        (f"{overlay.name}/config.sh", overlay / "config.sh")]
    if custom.ssh_key and custom.ssh_user != "root":
        # sshd reads authorized_keys as the user; the overlay's files arrive owned by root, and
        # KIWI hands a home to its user only when it creates the user.
        fragments.append(("--ssh-user", f'chown -R "{custom.ssh_user}:" '
                          f'"{home(custom.ssh_user)}/.ssh"'))
    _compose_config_sh(destination / "config.sh", fragments)
    cloud = get_cloud(custom.cloud)
    if cloud is not QEMU:
        _add_cloud_files(destination / "root", cloud)
    if custom.ssh_key:
        _authorize_ssh_key(custom.ssh_key, destination / "root" / home(custom.ssh_user).lstrip("/")
                           / ".ssh")
    if custom != Customisation(ssh_key=custom.ssh_key):  # anything for config.xml
        _customise_config_xml(destination / "config.xml", custom)
    return Composition(destination, files)


def home(user: str) -> str:
    return "/root" if user == "root" else f"/home/{user}"


def described_format(config_xml: Path) -> str:
    """The disk format a description builds: its <type format=...>, raw when it has none."""
    image_type = ET.parse(config_xml).find("preferences/type")
    if image_type is None:
        raise InputError(f"{config_xml} has no <preferences><type>",
                         "a KIWI description names the image type it builds")
    return image_type.get("format", "raw")


def _add_uki_chain(destination: Path, overlay: Path) -> None:
    """For each <preferences> whose <type> runs the UKI hook: the hook beside config.xml and its
    image files in the KIWI profile overlay (``<description>/<profile>/``) of each of its profiles,
    or in ``root/`` when the preferences name none; so no description carries a copy."""
    for preferences in ET.parse(destination / "config.xml").getroot().iterfind("preferences"):
        if not any(t.get("editbootinstall") == UKI_HOOK for t in preferences.iterfind("type")):
            continue
        shutil.copy2(overlay / UKI_HOOK, destination / UKI_HOOK)
        for profile in (preferences.get("profiles") or "root").split(","):
            shutil.copytree(overlay / UKI_ROOT, destination / profile.strip(), dirs_exist_ok=True)


def _customise_config_xml(config_xml: Path, custom: Customisation) -> None:
    """KIWI's own elements: <package> in the shared image packages, <size> and format= on every
    <type>, and <users> for a named SSH user (no password: ``*`` is no valid hash)."""
    original = config_xml.read_text()
    tree = ET.parse(config_xml, ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    image = tree.getroot()
    cloud = get_cloud(custom.cloud)
    packages = (*custom.packages, *((CLOUD_INIT_PACKAGE,) if cloud.datasource else ()))
    if packages:
        shared = next((p for p in image.iterfind("packages") if p.get("type") == "image"
                       and not p.get("profiles")), None)
        if shared is None:
            shared = ET.SubElement(image, "packages", type="image")
        present = {p.get("name") for p in shared.iterfind("package")}
        for name in dict.fromkeys(packages):
            if name not in present:
                ET.SubElement(shared, "package", name=name)
    for image_type in image.iterfind("preferences/type"):
        if cloud is not QEMU:
            _fit_type_to_cloud(image_type, custom.size_mib, cloud)
        if custom.root == VERITY:
            _add_verity_partition(image_type, custom.size_mib)
        if custom.size_mib:
            size = image_type.find("size")
            if size is None:
                size = ET.SubElement(image_type, "size")
            size.attrib = {"unit": "M"}
            size.text = str(custom.size_mib)
        if custom.image_format == "raw":
            image_type.attrib.pop("format", None)  # KIWI's plain disk is the raw image
        elif custom.image_format:
            image_type.set("format", custom.image_format)
    if custom.ssh_key and custom.ssh_user != "root":
        # KIWI creates the user after placing the overlay and hands its home (with .ssh) to it.
        users = ET.SubElement(image, "users")
        ET.SubElement(users, "user", name=custom.ssh_user, home=home(custom.ssh_user),
                      password="*", shell="/bin/bash")
    ET.indent(tree, space="    ")
    # The declaration and comments before <image> are outside ElementTree's tree: keep them.
    config_xml.write_text(original[:original.index("<image")] + ET.tostring(image, encoding="unicode")
                          + "\n")


VERITY, WRITABLE = "verity", "writable"


def verity_hash_mib(data_mib: int) -> int:
    """Room for a SHA-256 hash tree of 4 KiB blocks over ``data_mib``: 32 bytes per block is 1/128
    of the data, the upper levels 1/128 of that, plus veritysetup's superblock; rounded up."""
    return data_mib // 127 + 2


def _add_verity_partition(image_type: ET.Element, size_mib: int | None) -> None:
    """KIWI's spare partition (GPT label p.spare), last on the disk and without a file system: a
    <partitions> entry would need a mount point (KIWI 11.1 mounts every custom partition).  It is
    carved out of <size> (KIWI adds partitions to a size only when it is additive), so the disk
    stays the size asked for."""
    size_mib = size_mib or _described_size_mib(image_type, "to size a verity hash tree by")
    image_type.set("spare_part", str(verity_hash_mib(size_mib)))
    image_type.set("spare_part_is_last", "true")


def _described_size_mib(image_type: ET.Element, purpose: str) -> int:
    size = image_type.find("size")
    if size is None or not (size.text or "").strip().isdigit():
        raise InputError(f"the description's <type> has no <size> {purpose}", "give --size")
    return int((size.text or "").strip()) * (1024 if size.get("unit", "M") == "G" else 1)


def check_cloud_size(size_mib: int, cloud: Cloud) -> None:
    """The disk KIWI writes is <size> exactly: it must be what the cloud imports (Google Cloud: a
    whole number of GiB; Azure: of MiB, which every --size is)."""
    if size_mib * MIB % cloud.size_multiple:
        unit = {MIB: "MiB", GIB: "GiB"}[cloud.size_multiple]
        raise InputError(f"--cloud {cloud.name}: {cloud.title} imports a disk of a whole number of "
                         f"{unit}; {size_mib}M is not",
                         f"give --size {-(-size_mib * MIB // GIB)}G")


def _fit_type_to_cloud(image_type: ET.Element, size_mib: int | None, cloud: Cloud) -> None:
    """The cloud's KIWI format (with its qemu-img options), its disk size rule and its console."""
    if cloud.kiwi_format:
        image_type.set("format", cloud.kiwi_format)
    if cloud.kiwi_format_options:
        image_type.set("formatoptions", cloud.kiwi_format_options)
    check_cloud_size(size_mib or _described_size_mib(image_type, "to check the cloud's disk size by"),
                     cloud)
    cmdline = image_type.get("kernelcmdline", "").split()
    if not any(word.split(",")[0] == f"console={cloud.console}" for word in cmdline):
        # The last console= is /dev/console, where systemd and the self-check write.
        image_type.set("kernelcmdline", " ".join([*cmdline, f"console={cloud.console},115200"]))


def _add_cloud_files(root: Path, cloud: Cloud) -> None:
    """The cloud's initrd drivers and cloud-init's datasource, as files in the composed root."""
    dracut = root / CLOUD_DRACUT_CONF
    dracut.parent.mkdir(parents=True, exist_ok=True)
    dracut.write_text(
        f"# tdx-image --cloud {cloud.name}: {cloud.title} attaches the boot disk over "
        f"{cloud.disk_interface};\n# the initrd needs these to find the root and the network.\n"
        f'add_drivers+=" {" ".join(cloud.initrd_drivers)} "\n')
    if cloud.datasource:
        datasource = root / CLOUD_INIT_DATASOURCE
        datasource.parent.mkdir(parents=True, exist_ok=True)
        datasource.write_text(
            f"# tdx-image --cloud {cloud.name}: ask this cloud's metadata service only (cloud-init "
            "would otherwise probe every datasource it knows).\n"
            f"datasource_list: [ {cloud.datasource} ]\n")


def _overlay_manifest(overlay_root: Path) -> dict[str, dict]:
    files = {}
    for path in sorted(overlay_root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files["/" + path.relative_to(overlay_root).as_posix()] = {
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "mode": oct(path.stat().st_mode & 0o7777),
            }
    return files


def _compose_config_sh(destination: Path, fragments: list[tuple[str, Path | str]]) -> None:
    """One config.sh running each fragment (a script file, skipped when absent, or script text)
    in its own subshell, in order.

    A subshell keeps one fragment's ``exit`` or shell options from skipping the next.
    """
    parts = ["#!/bin/bash", "# Composed by tdx-image: target setup, then the shared overlay.",
             "set -euo pipefail"]
    for name, fragment in fragments:
        if isinstance(fragment, Path):
            if not fragment.is_file():
                continue
            fragment = fragment.read_text()
        parts += [f"# ---- {name}", "(", fragment.rstrip("\n"), ")"]
    destination.write_text("\n".join(parts) + "\n")
    destination.chmod(0o755)


def read_ssh_keys(key_file: Path) -> list[str]:
    """The OpenSSH public keys in ``key_file`` (a .pub or authorized_keys file)."""
    text = read_text(key_file, "--ssh-key", SSH_KEY_MAX_BYTES)
    keys = [line.strip() for line in text.splitlines() if line.strip()]
    if not keys or not all(key.startswith(SSH_KEY_TYPES) for key in keys):
        raise InputError(f"{key_file} is not an OpenSSH public key file",
                         "pass the .pub file, never the private key")
    for number, key in enumerate(keys, 1):
        if not _public_key_blob_matches(key):
            raise InputError(f"{key_file} line {number} is not a valid OpenSSH public key "
                             "(its base64 key does not decode to the key type it names)",
                             "pass the .pub file ssh-keygen wrote, unedited")
    return keys


def _public_key_blob_matches(key: str) -> bool:
    """``TYPE BASE64 [comment]``: the key data is base64 of SSH wire format, which starts with
    the type again (RFC 4253 6.6: string "ssh-ed25519", ...)."""
    fields = key.split()
    if len(fields) < 2:
        return False
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except ValueError:
        return False
    length = int.from_bytes(blob[:4], "big")
    return len(blob) > 4 + length and blob[4:4 + length] == fields[0].encode()


def _authorize_ssh_key(key_file: Path, ssh_dir: Path) -> None:
    keys = read_ssh_keys(key_file)
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text("\n".join(keys) + "\n")
    os.chmod(authorized, 0o600)
