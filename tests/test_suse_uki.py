"""Leap 16.0 and SLES 16.0 compose debian 13's attested chain (a UKI written by the overlay's
uki.sh, a dm-verity root, NetworkManager, SELinux); 15.x keeps shim + grub and warns; the one
uki.sh lands in every description that names it, its image files in the UKI profiles only."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imagebuilder.build.compose import UKI_HOOK, Customisation, verity_hash_mib
from imagebuilder.build.pipeline import BuildRequest, compose_description
from imagebuilder.core.paths import SHARED_OVERLAY
from imagebuilder.distros.targets import get_target
from tests.conftest import run_cli

RMT = "https://rmt.example.com/repo"  # never contacted: the dry run's checks are offline
SUSE_16 = [("leap", None, ()), ("sles", RMT, ("--mirror", RMT))]
PROFILE_16 = {"leap": "Leap16", "sles": "SLES16"}
VERITY_DRACUT = Path("etc/dracut.conf.d/81-tdx-guest-verity.conf")
FSTAB_SCRIPT = Path("etc/fstab.script")


def composed(tmp_path: Path, name: str, release: str | None = None, mirror: str | None = None) -> Path:
    """The description a build of ``name`` composes with its default settings (root included)."""
    target = get_target(name, release)
    request = BuildRequest(target=target, out_dir=tmp_path / "out", mirror=mirror,
                           custom=Customisation(root=target.root_mode(None)))
    return compose_description(request, tmp_path / "d").path


def profile_type(description: Path, profile: str) -> ET.Element:
    """The <type> KIWI builds for ``profile``: in the one <preferences> naming it."""
    image = ET.parse(description / "config.xml").getroot()
    [found] = [t for p in image.iterfind("preferences")
               if profile in (p.get("profiles") or "").split(",") for t in p.iterfind("type")]
    return found


def profile_packages(description: Path, profile: str) -> set[str]:
    image = ET.parse(description / "config.xml").getroot()
    return {package.get("name") for packages in image.iterfind("packages")
            if packages.get("type") == "image"
            and profile in (packages.get("profiles") or profile).split(",")
            for package in packages.iterfind("package")}


def dry_run(*args: str) -> dict:
    result = run_cli("build", *args, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("name, mirror, options", SUSE_16)
def test_suse_16_dry_run_composes_the_uki_chain_with_a_verity_root(tmp_path, name, mirror, options):
    plan = dry_run(name, *options)  # KIWI's own checks accept the composed description
    command = plan["command"]
    profile = command[command.index("--profile") + 1]
    assert (plan["release"], plan["warning"], profile) == ("16.0", None, PROFILE_16[name])
    description = composed(tmp_path, name, mirror=mirror)
    image_type = profile_type(description, profile)
    assert image_type.get("editbootinstall") == UKI_HOOK
    assert image_type.find("bootloader").get("name") == "custom"  # no shim, no grub
    assert image_type.get("firmware") == "efi"
    assert image_type.get("spare_part") == str(verity_hash_mib(4096))  # the hash tree's partition
    assert image_type.get("spare_part_is_last") == "true"
    assert "security=selinux selinux=1" in image_type.get("kernelcmdline")
    assert (description / UKI_HOOK).read_bytes() == (SHARED_OVERLAY / UKI_HOOK).read_bytes()
    for name_in_root in (VERITY_DRACUT, FSTAB_SCRIPT):
        assert (description / profile / name_in_root).read_bytes() == (
            SHARED_OVERLAY / "uki-root" / name_in_root).read_bytes()
    packages = profile_packages(description, profile)
    assert {"NetworkManager", "systemd-boot", "systemd-ukify", "libcryptsetup12",
            "selinux-policy-targeted", "policycoreutils"} <= packages
    assert not {"shim", "grub2-x86_64-efi", "wicked", "selinux-autorelabel"} & packages


@pytest.mark.parametrize("name, release, options", [("leap", "15.5", ()), ("sles", "15-SP5", ("--mirror", RMT))])
def test_suse_15_keeps_shim_and_grub_and_warns_about_its_end_of_life(tmp_path, name, release, options):
    plan = dry_run(name, "--release", release, *options)
    assert "reached the end of general support on 2024-12-31" in plan["warning"]
    assert "--release 16.0" in plan["warning"]
    profile = "Leap15" if name == "leap" else "SLES15"
    description = composed(tmp_path, name, release, RMT if options else None)
    image_type = profile_type(description, profile)
    assert (image_type.find("bootloader").get("name"), image_type.get("firmware")) == ("grub2", "uefi")
    assert image_type.get("spare_part") is None and image_type.get("editbootinstall") is None
    assert {"shim", "grub2-x86_64-efi", "wicked"} <= profile_packages(description, profile)
    assert not (description / profile).exists()  # the UKI chain's files are its profiles' only


def test_the_16_releases_default_to_a_verity_root_and_may_keep_it_writable():
    assert [get_target("leap", r).root_mode(None) for r in ("16.0", "15.6")] == ["verity", "writable"]
    assert get_target("sles", "16.0").root_mode("writable") == "writable"


def test_debian_13_gets_the_same_hook_and_debian_12_keeps_its_own_files(tmp_path):
    trixie = composed(tmp_path / "13", "debian", "13", "http://mirror.invalid")
    assert (trixie / UKI_HOOK).read_bytes() == (SHARED_OVERLAY / UKI_HOOK).read_bytes()
    assert (trixie / "trixie" / VERITY_DRACUT).is_file() and (trixie / "trixie" / FSTAB_SCRIPT).is_file()
    bookworm = composed(tmp_path / "12", "debian", "12", "http://mirror.invalid")
    assert not (bookworm / "bookworm" / VERITY_DRACUT).exists()
    # bookworm's fstab.script (the ESP on demand), not the UKI chain's
    assert (bookworm / "bookworm" / FSTAB_SCRIPT).read_bytes() != (
        SHARED_OVERLAY / "uki-root" / FSTAB_SCRIPT).read_bytes()
