"""Every check against an image broken in exactly its way: that check, and only the expected ones, fail.

The breakages are data (BREAKAGES) applied to a raw disk with the same tools a user has: debugfs -w
for ext4, mtools for the ESP, sfdisk and plain bytes for the GPT.  Here they break a small synthetic
image built in seconds; tests/integration/test_validate_integration.py applies them to the real one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagebuilder.distros.clouds import QEMU
from imagebuilder.image.uki import read_uki
from imagebuilder.validate import CHECKS, validate_image

from tests.conftest import schema_errors

REPO = Path(__file__).resolve().parents[1]
OVERLAY_ROOT = REPO / "overlays" / "tdx" / "root"
MANIFEST_IN_IMAGE = "/usr/lib/tdx-image/overlay-manifest.json"
MiB = 2**20
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
SELINUX_CONFIG = "/etc/selinux/config"


def sh(*args: str | Path, stdin: bytes | None = None, cwd: Path | None = None) -> bytes:
    return subprocess.run([str(arg) for arg in args], input=stdin, cwd=cwd, check=True,
                          capture_output=True).stdout


# ---- primitives that break a raw disk -------------------------------------------------------

def partitions(raw: Path) -> list[dict]:
    return json.loads(sh("sfdisk", "-J", raw))["partitiontable"]["partitions"]


def root_device(raw: Path) -> str:
    root = next(part for part in partitions(raw) if part["type"] == "0FC63DAF-8483-4772-8E79-3D69D8477DE4")
    return f"{raw}?offset={root['start'] * 512}"


def esp_image(raw: Path) -> str:
    esp = next(part for part in partitions(raw) if part["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
    return f"{raw}@@{esp['start'] * 512}"


def debugfs_write(raw: Path, *requests: str) -> None:
    device = root_device(raw)
    for request in requests:  # one at a time: debugfs reports errors on stderr and exits 0
        result = subprocess.run(["debugfs", "-w", "-R", request, device], capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line and not line.startswith("debugfs ")]
        assert not errors or request.startswith(("mkdir", "rm ")), f"{request}: {errors}"


def ext4_read(raw: Path, path: str) -> bytes:
    return sh("debugfs", "-R", f"cat {path}", root_device(raw))


def ext4_write(raw: Path, path: str, content: bytes, mode: int = 0o644) -> None:
    source = raw.parent / "content"
    source.write_bytes(content)
    source.chmod(mode)
    parents = [str(parent) for parent in reversed(Path(path).parents) if str(parent) != "/"]
    debugfs_write(raw, *(f"mkdir {parent}" for parent in parents), f"rm {path}", f"write {source} {path}")


def ext4_edit(raw: Path, path: str, edit: Callable[[str], str]) -> None:
    before = ext4_read(raw, path).decode()
    after = edit(before)
    assert after != before, f"the edit did not change {path}"
    ext4_write(raw, path, after.encode())


def boot_file(raw: Path, prefix: str) -> str:
    """/boot/<prefix><version> of the (single) installed kernel."""
    listing = sh("debugfs", "-R", "ls -p /boot", root_device(raw)).decode()
    names = [line.split("/")[5] for line in listing.splitlines() if line.count("/") == 7]
    return "/boot/" + next(name for name in names if name.startswith(prefix))


def module_file(raw: Path, name: str) -> str:
    """The installed module ``name`` (tdx-guest, tsm) in drivers/virt/coco or its own
    subdirectory there, for the (single) installed kernel."""
    def names(directory: str) -> list[str]:
        listing = sh("debugfs", "-R", f"ls -p {directory}", root_device(raw)).decode()
        return [line.split("/")[5] for line in listing.splitlines() if line.count("/") == 7]

    version = next(entry for entry in names("/usr/lib/modules") if entry not in (".", ".."))
    coco = f"/usr/lib/modules/{version}/kernel/drivers/virt/coco"
    for directory in (coco, f"{coco}/{name}"):
        found = [entry for entry in names(directory) if entry.startswith(f"{name}.ko")]
        if found:
            return f"{directory}/{found[0]}"
    raise AssertionError(f"no {name}.ko* below {coco}")


def without_lines(option: str) -> Callable[[str], str]:
    return lambda text: "".join(line for line in text.splitlines(keepends=True) if not line.startswith(option + "="))


def cpio_gzip(tree: dict[str, bytes], workdir: Path) -> bytes:
    """A gzip-compressed newc archive of {relative path: content}."""
    for name, content in tree.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_bytes(content)
    archive = sh("cpio", "-o", "-H", "newc", "--quiet", stdin="\n".join(tree).encode(), cwd=workdir)
    return sh("gzip", "-9n", stdin=archive)


# ---- the breakages ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Breakage:
    name: str
    break_image: Callable[[Path], None]
    expected: dict[str, str]  # check id -> status; every other check must pass


def _corrupt_primary_gpt_entries(raw: Path) -> None:
    with raw.open("r+b") as disk:
        disk.seek(2 * 512 + 56)  # first entry's name, in the primary entry array at LBA 2
        disk.write(b"X")


def _corrupt_root_superblock(raw: Path) -> None:
    root = next(part for part in partitions(raw) if part["type"].startswith("0FC63DAF"))
    with raw.open("r+b") as disk:
        disk.seek(root["start"] * 512 + 1024)
        disk.write(bytes(1024))


# In the grub chain the kernel command line (and so the root's verity arguments) is read from the root.
ROOT_DEPENDENT = [check.id for check in CHECKS if check.id.split(".")[0] in ("boot", "kernel", "overlay", "secure", "root")]

BREAKAGES = [
    Breakage("primary GPT entries damaged", _corrupt_primary_gpt_entries, {"disk.gpt": "fail"}),
    Breakage("no BOOTX64.EFI on the ESP", lambda raw: sh("mdel", "-i", esp_image(raw), "::/EFI/BOOT/BOOTX64.EFI"),
             {"disk.esp": "fail"}),
    Breakage("ESP retyped as basic data", lambda raw: sh("sfdisk", "--part-type", raw, "1", MS_BASIC_DATA),
             {"disk.esp": "fail"}),
    Breakage("BIOS boot partition added",
             lambda raw: sh("sfdisk", "--append", raw, stdin=f"start=34, size=2000, type={BIOS_BOOT}\n".encode()),
             {"disk.no-bios-boot": "fail"}),
    Breakage("root superblock zeroed", _corrupt_root_superblock,
             {"disk.root": "fail", **{check_id: "skip" for check_id in ROOT_DEPENDENT}}),
    Breakage("default kernel deleted", lambda raw: debugfs_write(raw, f"rm {boot_file(raw, 'vmlinuz-')}"),
             {"boot.default-entry": "fail"}),
    Breakage("no console= on the kernel command line",
             lambda raw: ext4_edit(raw, "/boot/grub/grub.cfg", lambda text: text.replace("console=ttyS0,115200", "quiet")),
             {"boot.serial-console": "fail"}),
    Breakage("kernel without TDX guest support",
             lambda raw: ext4_edit(raw, boot_file(raw, "config-"), lambda text: text.replace(
                 "CONFIG_INTEL_TDX_GUEST=y", "# CONFIG_INTEL_TDX_GUEST is not set")),
             {"kernel.tdx-guest": "fail"}),
    Breakage("kernel without TSM reports",
             lambda raw: ext4_edit(raw, boot_file(raw, "config-"), without_lines("CONFIG_TSM_REPORTS")),
             {"kernel.attestation": "warn"}),
    # SUSE's kernel-default lacks what kernel-default-extra holds: the config says =m, the
    # module tree has no file.
    Breakage("TDX guest driver module missing",
             lambda raw: debugfs_write(raw, f"rm {module_file(raw, 'tdx-guest')}"),
             {"kernel.attestation-modules": "fail"}),
    Breakage("configfs-tsm module missing",
             lambda raw: debugfs_write(raw, f"rm {module_file(raw, 'tsm')}"),
             {"kernel.attestation-modules": "fail"}),
    Breakage("kernel without lazy memory acceptance",
             lambda raw: ext4_edit(raw, boot_file(raw, "config-"), without_lines("CONFIG_UNACCEPTED_MEMORY")),
             {"kernel.unaccepted-memory": "info"}),
    Breakage("initrd without virtio modules",
             lambda raw: ext4_write(raw, boot_file(raw, "initrd"), cpio_gzip({"init": b"#!/bin/sh\n"}, raw.parent)),
             {"kernel.virtio": "fail"}),
    Breakage("overlay file changed",
             lambda raw: ext4_write(raw, "/etc/udev/rules.d/90-tdx-guest.rules", b'KERNEL=="tdx_guest", MODE="0666"\n'),
             {"overlay.files": "fail"}),
    Breakage("overlay file mode changed",
             lambda raw: debugfs_write(raw, "sif /usr/lib/tdx-image/tdx-selfcheck mode 0100644"),
             {"overlay.files": "fail"}),
    Breakage("root password set",
             lambda raw: ext4_edit(raw, "/etc/shadow", lambda text: text.replace("root:!*:", "root:$6$salt$hash:", 1)),
             {"secure.passwords": "fail"}),
    Breakage("root password empty",
             lambda raw: ext4_edit(raw, "/etc/shadow", lambda text: text.replace("root:!*:", "root::", 1)),
             {"secure.passwords": "fail"}),
    Breakage("SSH host key baked in",
             lambda raw: ext4_write(raw, "/etc/ssh/ssh_host_ed25519_key", b"-----BEGIN OPENSSH PRIVATE KEY-----\n", 0o600),
             {"secure.ssh-host-keys": "fail"}),
    Breakage("machine-id baked in",
             lambda raw: ext4_write(raw, "/etc/machine-id", b"0123456789abcdef0123456789abcdef\n"),
             {"secure.machine-id": "fail"}),
    Breakage("apt credentials left",
             lambda raw: ext4_write(raw, "/etc/apt/auth.conf.d/mirror.conf", b"machine mirror login builder password secret\n"),
             {"secure.repo-credentials": "fail"}),
    Breakage("zypper's credentials.cat left",  # libzypp's store for a password from a URL
             lambda raw: ext4_write(raw, "/root/.zypp/credentials.cat", b"[https://rmt.invalid/repo]\nusername=u\npassword=secret\n", 0o600),
             {"secure.repo-credentials": "fail"}),
    Breakage("password in a repository URL",
             lambda raw: ext4_write(raw, "/etc/zypp/repos.d/updates.repo", b"[updates]\nbaseurl=https://builder:secret@mirror.invalid/repo\n"),
             {"secure.repo-credentials": "fail"}),
    # SUSE 16 enables SELinux; KIWI labels the root at build time (a verity root stays as built)
    Breakage("SELinux enforcing on a root without labels",
             lambda raw: ext4_write(raw, SELINUX_CONFIG, b"SELINUX=enforcing\nSELINUXTYPE=targeted\n"),
             {"root.selinux-labels": "fail"}),
    Breakage("apt proxy left",
             lambda raw: ext4_write(raw, "/etc/apt/apt.conf.d/90proxy", b'Acquire::http::Proxy "http://proxy.build.invalid:3128";\n'),
             {"secure.proxy": "fail"}),
    Breakage("proxy in /etc/environment",
             lambda raw: ext4_write(raw, "/etc/environment", b"https_proxy=http://proxy.build.invalid:3128\n"),
             {"secure.proxy": "fail"}),
]


def statuses(report) -> dict[str, str]:
    """The checks that did not pass, by id."""
    return {check.id: check.status for check in report.checks if check.status != "pass"}


def assert_breakage_seen(pristine_raw: Path, breakage: Breakage, workdir: Path, manifest: Path | None = None) -> None:
    broken = workdir / "broken.raw"
    sh("cp", "--sparse=always", pristine_raw, broken)
    breakage.break_image(broken)
    report = validate_image(broken, manifest=manifest)
    assert statuses(report) == breakage.expected, json.dumps(report.to_dict(), indent=1)
    assert report.ok == all(status in ("warn", "info") for status in breakage.expected.values())


def test_every_check_has_a_breakage():
    """Those of the clouds QEMU cannot stand for: tests/test_cloud_checks.py."""
    breakages = BREAKAGES + SEALED_BREAKAGES
    assert {check.id for check in CHECKS if check.applies_to(QEMU)} <= {
        check_id for b in breakages for check_id in b.expected}


# ---- a small synthetic image, built without root -------------------------------------------

KERNEL = "6.12.0-test-amd64"
ROOT_UUID = "3c8a2fd4-7b1e-4c55-9a61-0d2f6be1a001"
GRUB_CFG = f"""\
set default="0"
serial --unit=0 --speed=115200
menuentry 'Test Linux' --class debian $menuentry_id_option 'gnulinux-simple-{ROOT_UUID}' {{
	search --no-floppy --fs-uuid --set=root {ROOT_UUID}
	linux	/boot/vmlinuz-{KERNEL} root=UUID={ROOT_UUID} ro  console=ttyS0,115200
	initrd	/boot/initrd.img-{KERNEL}
}}
"""
KERNEL_CONFIG = """\
CONFIG_INTEL_TDX_GUEST=y
CONFIG_TDX_GUEST_DRIVER=m
CONFIG_TSM_REPORTS=m
CONFIG_UNACCEPTED_MEMORY=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_BLK=m
CONFIG_SCSI_VIRTIO=m
CONFIG_VIRTIO_NET=m
"""


def _initrd(workdir: Path) -> bytes:
    """An early-microcode cpio, then a zstd-compressed main archive with the virtio modules."""
    early_dir, main_dir = workdir / "early", workdir / "main"
    (early_dir / "kernel/x86/microcode").mkdir(parents=True)
    (early_dir / "kernel/x86/microcode/GenuineIntel.bin").write_bytes(b"\x01" * 300)
    early = sh("cpio", "-o", "-H", "newc", "--quiet", stdin=b"kernel/x86/microcode/GenuineIntel.bin\n", cwd=early_dir)
    modules = [f"usr/lib/modules/{KERNEL}/kernel/drivers/{path}.ko.xz"
               for path in ("block/virtio_blk", "scsi/virtio_scsi", "net/virtio_net")]
    for module in modules:
        (main_dir / module).parent.mkdir(parents=True, exist_ok=True)
        (main_dir / module).write_bytes(b"module")
    archive = sh("cpio", "-o", "-H", "newc", "--quiet", stdin="\n".join(modules).encode(), cwd=main_dir)
    return early + sh("zstd", "-q", "-c", stdin=archive)


def _root_tree(tree: Path, workdir: Path) -> None:
    shutil.copytree(OVERLAY_ROOT, tree, symlinks=True)
    files = {"/" + path.relative_to(tree).as_posix(): {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                                       "mode": oct(path.stat().st_mode & 0o7777)}
             for path in sorted(tree.rglob("*")) if path.is_file()}
    content = {
        MANIFEST_IN_IMAGE: json.dumps({"overlay": "tdx", "files": files}),
        "/boot/grub/grub.cfg": GRUB_CFG,
        f"/boot/vmlinuz-{KERNEL}": "kernel",
        f"/boot/config-{KERNEL}": KERNEL_CONFIG,
        "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\n",
        "/etc/shadow": "root:!*:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n",
        "/etc/ssh/sshd_config": "PermitRootLogin no\n",
        "/etc/machine-id": "",
        "/etc/apt/sources.list.d/debian.sources": "Types: deb\nURIs: http://deb.invalid/debian\n",
    }
    for path, text in content.items():
        (tree / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tree / path.lstrip("/")).write_text(text)
    (tree / f"boot/initrd.img-{KERNEL}").write_bytes(_initrd(workdir))
    for module in ("tdx-guest/tdx-guest.ko.xz", "tsm.ko.xz"):  # the =m attestation drivers
        path = tree / f"usr/lib/modules/{KERNEL}/kernel/drivers/virt/coco/{module}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"module")


def build_synthetic_image(workdir: Path) -> Path:
    """48 MiB GPT disk: 1: ESP (FAT) with shim's path and a grub.cfg naming the root, 2: ext4 root."""
    tree = workdir / "tree"
    _root_tree(tree, workdir)
    esp, root, disk = workdir / "esp.img", workdir / "root.img", workdir / "synthetic.raw"
    sh("mkfs.fat", "-C", esp, str(8 * 1024))
    sh("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
    (workdir / "grub.cfg").write_text(f"search --fs-uuid --set=root {ROOT_UUID}\nset prefix=($root)/boot/grub\n"
                                      "configfile ($root)/boot/grub/grub.cfg\n")
    (workdir / "shim.efi").write_bytes(b"MZ")
    sh("mcopy", "-i", esp, workdir / "shim.efi", "::/EFI/BOOT/BOOTX64.EFI")
    sh("mcopy", "-i", esp, workdir / "grub.cfg", "::/EFI/BOOT/grub.cfg")
    sh("mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, "-d", tree, root, "32M")
    with disk.open("wb") as out:
        out.truncate(48 * MiB)
        for offset, image in ((1 * MiB, esp), (9 * MiB, root)):
            out.seek(offset)
            out.write(image.read_bytes())
    # first-lba 34 as KIWI writes it, leaving room before partition 1 (for the BIOS boot breakage)
    sh("sfdisk", "-q", disk, stdin=(b"label: gpt\nfirst-lba: 34\n"
                                    b"start=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=p.UEFI\n"
                                    b"start=18432, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=p.lxroot\n"))
    return disk


def test_intact_synthetic_image_passes_every_check(synthetic_image):
    report = validate_image(synthetic_image)
    assert statuses(report) == {}, json.dumps(report.to_dict(), indent=1)
    assert report.ok


def test_reports_match_the_shipped_schema_which_refuses_what_the_code_does_not_write(synthetic_image, tmp_path):
    intact = validate_image(synthetic_image).to_dict()
    broken_raw = tmp_path / "broken.raw"
    sh("cp", "--sparse=always", synthetic_image, broken_raw)
    _corrupt_root_superblock(broken_raw)
    broken = validate_image(broken_raw).to_dict()
    assert {check["status"] for check in broken["checks"]} >= {"pass", "fail", "skip"}
    for document in (intact, broken):
        assert schema_errors("validation", json.loads(json.dumps(document))) == []
    assert schema_errors("validation", {**intact, "verdict": "ok"})  # closed: an unknown key
    assert schema_errors("validation", {key: value for key, value in intact.items() if key != "ok"})
    row = {**intact["checks"][0], "status": "passed"}
    assert schema_errors("validation", {**intact, "checks": [row]})


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[breakage.name for breakage in BREAKAGES])
def test_breakage_is_seen_by_its_check(synthetic_image, breakage, tmp_path):
    assert_breakage_seen(synthetic_image, breakage, tmp_path)


def label_root(raw: Path, context: str) -> list[str]:
    """security.selinux on / and everything directly in / and /etc, as debugfs sets it (setfiles
    would on a built image); the paths labelled."""
    paths = ["/"]
    for directory in ("/", "/etc"):
        listing = sh("debugfs", "-R", f"ls -p {directory}", root_device(raw)).decode()
        names = [line.split("/")[5] for line in listing.splitlines() if line.count("/") >= 6]
        paths += [f"{directory.rstrip('/')}/{name}" for name in names if name not in (".", "..")]
    debugfs_write(raw, *(f"ea_set {path} security.selinux {context}" for path in paths))
    return paths


def test_a_labelled_selinux_root_passes_and_one_unlabeled_t_file_fails_it(synthetic_image, tmp_path):
    raw = tmp_path / "selinux.raw"
    sh("cp", "--sparse=always", synthetic_image, raw)
    ext4_write(raw, SELINUX_CONFIG, b"SELINUX=enforcing\nSELINUXTYPE=targeted\n")
    labelled = label_root(raw, "system_u:object_r:etc_t:s0")
    report = validate_image(raw)
    assert statuses(report) == {}, json.dumps(report.to_dict(), indent=1)
    evidence = {check.id: check.detail for check in report.checks}["root.selinux-labels"]
    assert evidence == f"SELINUX=enforcing: {len(set(labelled))} files in / and /etc labelled"
    debugfs_write(raw, "ea_set /etc/passwd security.selinux system_u:object_r:unlabeled_t:s0")
    report = validate_image(raw)
    assert statuses(report) == {"root.selinux-labels": "fail"}
    assert {check.id: check.detail for check in report.checks}["root.selinux-labels"].endswith(
        "no SELinux label on /etc/passwd")


# ---- the sealed chain: a UKI on the ESP and a dm-verity root ----------------------------------

ROOT_PARTUUID = "5b0c9d52-4f3e-4a8e-9c1d-2b7a6e0f1a01"
HASH_PARTUUID = "5b0c9d52-4f3e-4a8e-9c1d-2b7a6e0f1a02"
ESP_LOADER = "::/EFI/BOOT/BOOTX64.EFI"


def make_pe(sections: dict[str, bytes]) -> bytes:
    """A PE/COFF file holding ``sections`` (no code: the validator reads, nothing runs it)."""
    headers = 0x40 + 4 + 20 + 40 * len(sections)
    table, data, offset = b"", b"", -(-headers // 512) * 512
    for name, content in sections.items():
        table += struct.pack("<8sIIII12xI", name.encode(), len(content), offset, len(content), offset, 0x40000040)
        data += content.ljust(-(-len(content) // 512) * 512, b"\0")
        offset += -(-len(content) // 512) * 512
    dos = b"MZ".ljust(0x3C, b"\0") + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0, 0, 0x22)
    return (dos + b"PE\0\0" + coff + table).ljust(-(-headers // 512) * 512, b"\0") + data


def uki_sections(raw: Path) -> dict[str, bytes]:
    return dict(read_uki(sh("mtype", "-i", esp_image(raw), ESP_LOADER)).sections)


def write_uki(raw: Path, sections: dict[str, bytes]) -> None:
    (raw.parent / "uki.efi").write_bytes(make_pe(sections))
    sh("mcopy", "-o", "-i", esp_image(raw), raw.parent / "uki.efi", ESP_LOADER)


def edit_cmdline(raw: Path, edit: Callable[[str], str]) -> None:
    sections = uki_sections(raw)
    before = sections[".cmdline"].decode()
    assert edit(before) != before, "the edit did not change the command line"
    write_uki(raw, {**sections, ".cmdline": edit(before).encode()})


def flip_file_byte(raw: Path, path: str) -> None:
    """One byte of a file's data, changed in place on the root partition (under the hash tree)."""
    block = int(sh("debugfs", "-R", f"bmap {path} 0", root_device(raw)).split()[0])
    root = next(part for part in partitions(raw) if part["name"] == "p.lxroot")
    with raw.open("r+b") as disk:
        disk.seek(root["start"] * 512 + block * 4096 + 100)
        byte = disk.read(1)
        disk.seek(-1, 1)
        disk.write(bytes([byte[0] ^ 0xFF]))


def build_sealed_image(workdir: Path) -> Path:
    """The synthetic root sealed as debian 13's uki.sh seals it: 1: ESP with a UKI whose command
    line carries the root hash, 2: ext4 root (verity data), 3: the hash tree (veritysetup)."""
    if shutil.which("veritysetup") is None:
        pytest.skip("veritysetup (cryptsetup-bin) is not installed: setup.sh installs it")
    tree = workdir / "tree"
    _root_tree(tree, workdir)
    (tree / "boot/grub/grub.cfg").unlink()
    (tree / "etc/fstab").write_text("# the UKI's command line names the root\n")
    esp, root, hashes, disk = (workdir / name for name in ("esp.img", "root.img", "hash.img", "sealed.raw"))
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-U", ROOT_UUID, "-d", tree, root, "32M")
    hashes.write_bytes(bytes(MiB))
    root_hash = sh("veritysetup", "format", root, hashes).decode().split("Root hash:")[1].split()[0]
    cmdline = (f"console=ttyS0,115200 root=/dev/mapper/root ro roothash={root_hash} "
               f"systemd.verity_root_data=PARTUUID={ROOT_PARTUUID} systemd.verity_root_hash=PARTUUID={HASH_PARTUUID} "
               "systemd.verity_root_options=panic-on-corruption systemd.volatile=overlay")
    sh("mkfs.fat", "-C", esp, str(8 * 1024))
    sh("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
    (workdir / "uki.efi").write_bytes(make_pe({
        ".osrel": b'PRETTY_NAME="Test Linux"\n', ".cmdline": cmdline.encode(), ".uname": KERNEL.encode(),
        ".linux": b"kernel", ".initrd": (tree / f"boot/initrd.img-{KERNEL}").read_bytes()}))
    sh("mcopy", "-i", esp, workdir / "uki.efi", ESP_LOADER)
    with disk.open("wb") as out:
        out.truncate(48 * MiB)
        for offset, image in ((1 * MiB, esp), (9 * MiB, root), (41 * MiB, hashes)):
            out.seek(offset)
            out.write(image.read_bytes())
    sh("sfdisk", "-q", disk, stdin=(
        "label: gpt\nfirst-lba: 34\n"
        "start=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=p.UEFI\n"
        f"start=18432, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=p.lxroot, uuid={ROOT_PARTUUID}\n"
        f"start=83968, size=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=p.spare, uuid={HASH_PARTUUID}\n"
    ).encode())
    return disk


@pytest.fixture(scope="module")
def sealed_image(tmp_path_factory) -> Path:
    return build_sealed_image(tmp_path_factory.mktemp("sealed"))


SEALED_BREAKAGES = [
    Breakage("one byte of a file on the verity root changed",
             lambda raw: flip_file_byte(raw, "/usr/lib/tdx-image/tdx-selfcheck"),
             {"root.verity": "fail", "overlay.files": "fail"}),
    Breakage("hash tree changed", lambda raw: _write_at(raw, 41 * MiB + 4096 + 7, b"\xff"), {"root.verity": "fail"}),
    Breakage("another root hash on the command line",
             lambda raw: edit_cmdline(raw, lambda text: re.sub(r"roothash=(\w)", lambda digit: "roothash=" + (
                 "1" if digit.group(1) == "0" else "0"), text)),
             {"root.verity": "fail"}),
    Breakage("verity root mounted writable",
             lambda raw: edit_cmdline(raw, lambda text: text.replace(" ro ", " rw ")),
             {"root.verity-read-only": "fail"}),
    Breakage("fstab mounts the verity root's partition",
             lambda raw: ext4_write(raw, "/etc/fstab", f"PARTUUID={ROOT_PARTUUID} /mnt ext4 defaults 0 2\n".encode()),
             {"root.verity-read-only": "fail", "root.verity": "fail"}),
    Breakage("UKI without an initrd",
             lambda raw: write_uki(raw, {name: data for name, data in uki_sections(raw).items() if name != ".initrd"}),
             {"boot.default-entry": "fail", "kernel.virtio": "skip"}),
]


def _write_at(raw: Path, offset: int, data: bytes) -> None:
    with raw.open("r+b") as disk:
        disk.seek(offset)
        disk.write(data)


def test_intact_sealed_image_passes_every_check_with_the_uki_and_verity_evidence(sealed_image):
    report = validate_image(sealed_image)
    assert statuses(report) == {}, json.dumps(report.to_dict(), indent=1)
    evidence = {check.id: check.detail for check in report.checks}
    assert "UKI of Test Linux, kernel 6.12.0-test-amd64" in evidence["boot.default-entry"]
    assert "= roothash= of the measured command line" in evidence["root.verity"]
    assert "root=/dev/mapper/root ro under a tmpfs overlay" in evidence["root.verity-read-only"]


@pytest.mark.parametrize("breakage", SEALED_BREAKAGES, ids=[breakage.name for breakage in SEALED_BREAKAGES])
def test_sealed_breakage_is_seen_by_its_check(sealed_image, breakage, tmp_path):
    assert_breakage_seen(sealed_image, breakage, tmp_path)
