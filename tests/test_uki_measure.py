"""Who measures what, read from real binaries: a UKI made by systemd's own ukify with the real
systemd-stub 257, the 252 stub, Debian's signed grub 2.06 and 2.12 and shim 16.1, and the
firmware reader on Debian's OVMF builds. The binaries come from tests/fetch-reference-packages.sh
(setup.sh runs it); a test skips when its package is not there.

Expected values come from the inputs given to ukify and from independent readers (GNU cpio for
the stub's generated archive), not from the code under test."""

import hashlib
import json
import lzma
import os
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagebuilder import cli
from imagebuilder.host import firmware as fw
from imagebuilder.host import virt
from imagebuilder.measure import components
from imagebuilder.measure.efi import GrubImage, PeImage
from imagebuilder.measure.uki import Uki, literal_cpio, mangle_cmdline
from tests.conftest import run_cli, schema_errors

REFERENCE = Path(os.environ.get("TDX_IMAGE_REFERENCE_PACKAGES", "/var/cache/tdx-image/reference-packages"))
EFI_DIR = "usr/lib/systemd/boot/efi"
# ukify joins the words of a --cmdline string with single spaces (ukify.py finalize_options)
# The root partition uki_disk makes, by the PARTUUID the command line names it.
ROOT_PARTUUID = "6b1f6c7e-0000-4000-8000-000000000002"
CMDLINE = f"root=PARTUUID={ROOT_PARTUUID} roothash=ab12 ro console=ttyS0"
OS_RELEASE = b'ID=debian\nVERSION_ID="13"\n'
INITRD = bytes(range(256)) * 397 + b"odd"  # not a multiple of 4: the stub pads it


def reference(suite: str, package: str, path: str) -> Path:
    found = REFERENCE / suite / package / path
    if not found.exists():
        pytest.skip(f"{found} missing: run tests/fetch-reference-packages.sh")
    return found


def ukify(work: Path, cmdline: str, initrd: bytes = INITRD, stub: Path | None = None) -> Path:
    """A UKI built by ukify 257 with the real 257 stub (or ``stub``); .linux is a PE
    (systemd-boot)."""
    tool = reference("trixie", "systemd-ukify", "usr/bin/ukify")
    stub = stub or reference("trixie", "systemd-boot-efi", f"{EFI_DIR}/linuxx64.efi.stub")
    kernel = reference("trixie", "systemd-boot-efi", f"{EFI_DIR}/systemd-bootx64.efi")
    python = shutil.which("python3", path="/usr/bin")
    if python is None or subprocess.run([python, "-c", "import pefile"]).returncode:
        pytest.skip("ukify needs the host's python3-pefile (setup.sh installs it)")
    (work / "initrd").write_bytes(initrd)
    (work / "os-release").write_bytes(OS_RELEASE)
    output = work / "test.efi"
    subprocess.run([python, tool, "build", "--linux", kernel, "--initrd", work / "initrd",
                    "--cmdline", cmdline, "--os-release", f"@{work / 'os-release'}",
                    "--stub", stub, "--uname", "6.12.0-test", "--output", output],
                   check=True, capture_output=True)
    return output


@pytest.fixture(scope="module")
def uki_path(tmp_path_factory) -> Path:
    return ukify(tmp_path_factory.mktemp("uki"), CMDLINE)


@pytest.fixture(scope="module")
def uki(uki_path) -> Uki:
    return Uki(uki_path.read_bytes(), "test.efi")


def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def test_the_stub_is_told_by_its_sdmagic_version(uki):
    assert uki.stub.name == "systemd-stub" and uki.stub.version.startswith("257.")
    assert uki.stub.in_td is True and "255" in uki.stub.why
    assert uki.unmodelled() is None


def test_a_252_stub_measures_into_no_rtmr():
    stub = reference("bookworm", "systemd-boot-efi", f"{EFI_DIR}/linuxx64.efi.stub")
    component = components.systemd_stub(PeImage(stub.read_bytes(), stub.name))
    assert component.version.startswith("252.") and component.in_td is False


def test_systemd_boot_is_not_taken_for_a_stub():
    boot = reference("trixie", "systemd-boot-efi", f"{EFI_DIR}/systemd-bootx64.efi")
    image = PeImage(boot.read_bytes(), boot.name)
    assert components.systemd_efi_binary(image)[0] == "systemd-boot"
    assert components.systemd_stub(image).in_td is None


def test_stub_measures_each_section_name_then_data_in_systemds_order(uki):
    events = uki.stub_events()
    names = [event.description for event in events[::2]]
    # unified_sections order, whatever order ukify wrote them in; .sdmagic/.text never
    assert names == [".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat"]
    assert all(event.pcr == 11 and not event.tagged for event in events)
    assert [event.data for event in events[::2]] == [name.encode() + b"\0" for name in names]
    data = dict(zip(names, (event.data for event in events[1::2])))
    assert data[".osrel"] == OS_RELEASE and data[".initrd"] == INITRD
    assert data[".cmdline"] == CMDLINE.encode()
    assert data[".uname"] == b"6.12.0-test"


def test_the_kernel_gets_the_command_line_as_utf16_load_options(uki):
    load_options, _ = uki.kernel_events()
    assert (load_options.pcr, load_options.tagged) == (9, True)
    assert load_options.description == "LOADED_IMAGE::LoadOptions"
    assert load_options.data == (CMDLINE + "\0").encode("utf-16-le")


def test_a_command_line_file_is_measured_raw_and_handed_over_mangled(tmp_path):
    """``--cmdline @FILE`` keeps the file's bytes (a trailing newline, tabs): the stub measures
    the section as is into PCR 11 and hands the kernel the mangled line (util.c)."""
    (tmp_path / "cmdline").write_bytes(b"  ro\tquiet  root=x \n")
    uki = Uki(ukify(tmp_path, f"@{tmp_path / 'cmdline'}").read_bytes(), "file.efi")
    cmdline = dict(zip((e.description for e in uki.stub_events()[::2]), (e.data for e in uki.stub_events()[1::2])))
    assert cmdline[".cmdline"] == b"  ro\tquiet  root=x \n"
    assert uki.kernel_events()[0].data == "ro quiet  root=x\0".encode("utf-16-le")


@pytest.mark.parametrize("given, mangled", [
    ("\n a\tb\x7fc  \n", "a b c"), ("", ""), ("x", "x"), (" \t", "")])
def test_command_line_mangling_follows_systemd_stub(given, mangled):
    assert mangle_cmdline(given) == mangled


def test_the_kernel_measures_the_initrd_plus_the_os_release_cpio(uki, tmp_path):
    """The stub appends .osrel as /.extra/os-release (generate_embedded_initrds), each part
    padded to 4 bytes; GNU cpio reads the generated archive back."""
    _, initrd = uki.kernel_events()
    assert initrd.description == "Linux initrd"
    padded = INITRD + bytes(-len(INITRD) % 4)
    assert initrd.data.startswith(padded)
    archive = initrd.data[len(padded):]
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True)
    lines = listing.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["dr-xr-xr-x", "-r--r--r--"]
    assert [line.split()[-1] for line in lines] == [".extra", ".extra/os-release"]
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / ".extra/os-release").read_bytes() == OS_RELEASE


def test_literal_cpio_is_padded_and_terminated():
    archive = literal_cpio(".extra", "profile", b"12345")
    assert len(archive) % 4 == 0 and archive.endswith(b"TRAILER!!!\0\0\0\0")
    assert archive.count(b"070701") == 3


def test_an_unknown_kernel_leaves_its_cc_measurements_unknown(uki):
    assert uki.linux.version is None and uki.linux.in_td is None


def bzimage(version: bytes) -> bytes:
    header = bytearray(0x400)
    header[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", header, 0x20E, 0x300 - 0x200)
    header[0x300 : 0x300 + len(version) + 1] = version + b"\0"
    return bytes(header)


@pytest.mark.parametrize("version, in_td", [
    (b"6.12.117+deb13-amd64 (debian-kernel@lists.debian.org) #1 SMP", True),
    (b"6.12.0-160000.5-default (geeko@buildhost) #1 SMP PREEMPT_DYNAMIC", True),  # SUSE 16's form
    (b"6.1.0-40-amd64 (debian-kernel@lists.debian.org) #1 SMP", None)])
def test_the_kernel_version_comes_from_the_boot_protocol_header(version, in_td):
    component = components.linux(bzimage(version))
    assert component.version == version.split(b" ")[0].decode() and component.in_td is in_td


@pytest.mark.parametrize("suite, version", [("bookworm", "2.06-13+deb12u2"), ("trixie", "2.12-9+deb13u4")])
def test_grub_2_06_and_2_12_reach_no_rtmr_without_a_vtpm(suite, version):
    path = reference(suite, "grub-efi-amd64-signed", "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")
    component = components.grub(GrubImage(path.read_bytes(), path.name))
    assert component.version == version and component.in_td is False
    assert "grub_tpm_present" in component.why


def test_shim_16_1_measures_through_cc():
    path = reference("bookworm", "shim-signed", "usr/lib/shim/shimx64.efi.signed")
    component = components.shim(PeImage(path.read_bytes(), path.name))
    assert (component.version, component.in_td) == ("16.1", True)


# --- firmware volumes ---------------------------------------------------------------------

DXE_CORE = uuid.UUID("d6a2cb7f-6a18-4e2f-b43b-9920a733700a")  # MdeModulePkg/Core/Dxe/DxeMain.inf


def test_bookworms_unified_ovmf_runs_a_td_but_records_no_rtmr_event():
    path = Path("/usr/share/ovmf/OVMF.fd")
    if not path.exists():
        pytest.skip("the host's ovmf package is not installed")
    image = fw.FirmwareImage.read(path)
    assert image.has(DXE_CORE)  # the compressed DXE volume was opened
    assert image.has(fw.TDXDXE) and not image.records_rtmr_events
    assert "no TdTcg2Dxe" in virt.td_firmware_note(path, virt.td_measured_boot(path))


@pytest.mark.parametrize("name", ["usr/share/ovmf/OVMF.fd", "usr/share/OVMF/OVMF_CODE_4M.fd"])
def test_trixies_ovmf_records_rtmr_events(name):
    image = fw.FirmwareImage.read(reference("trixie", "ovmf", name))
    assert image.has(DXE_CORE) and image.records_rtmr_events
    assert image.drivers() == ["TdTcg2Dxe", "TdxDxe", "Tcg2Dxe"]


def ffs_file(name: uuid.UUID, sections: bytes, large: bool = False) -> bytes:
    body_size = 24 + (8 if large else 0) + len(sections)
    size = b"\0\0\0" if large else body_size.to_bytes(3, "little")
    header = struct.pack("<16sHBB3sB", name.bytes_le, 0, 0x07, 0x01 if large else 0, size, 0xF8)
    if large:
        header += struct.pack("<Q", body_size)
    data = header + sections
    return data + bytes(-len(data) % 8)


def section(kind: int, body: bytes) -> bytes:
    data = (4 + len(body)).to_bytes(3, "little") + bytes([kind]) + body
    return data + bytes(-len(data) % 4)


def volume(files: bytes, length: int = 0x1000) -> bytes:
    header = bytearray(struct.pack("<16s16sQ4sIHHHBB", bytes(16), fw.FFS2.bytes_le, length,
                                   b"_FVH", 0, 72, 0, 0, 0, 2) + struct.pack("<IIII", 1, length, 0, 0))
    checksum = (-sum(struct.unpack("<36H", header))) & 0xFFFF
    struct.pack_into("<H", header, 50, checksum)
    body = bytes(header) + files
    return body + b"\xff" * (length - len(body))


def lzma_guided(payload: bytes) -> bytes:
    compressed = lzma.compress(payload, format=lzma.FORMAT_ALONE)
    body = struct.pack("<16sHH", fw.LZMA_SECTION.bytes_le, 4 + 20, 0x01) + compressed
    return section(0x02, body)


def test_a_driver_inside_an_lzma_compressed_nested_volume_is_found(tmp_path):
    inner = volume(ffs_file(fw.TDTCG2DXE, section(0x10, b"PE32")), length=0x1000)
    outer = volume(ffs_file(uuid.uuid4(), lzma_guided(section(0x17, inner)), large=True), length=0x2000)
    path = tmp_path / "fw.fd"
    path.write_bytes(b"\0" * 0x1000 + outer)  # a volume on the next block boundary
    assert fw.FirmwareImage.read(path).records_rtmr_events


def test_a_volume_with_a_bad_checksum_is_no_volume(tmp_path):
    data = bytearray(volume(ffs_file(fw.TDTCG2DXE, section(0x10, b"PE32"))))
    data[50] ^= 1
    path = tmp_path / "fw.fd"
    path.write_bytes(bytes(data))
    with pytest.raises(fw.FirmwareError, match="no firmware volume"):
        fw.FirmwareImage.read(path).files


# --- the whole prediction for a disk whose ESP boots the UKI -------------------------------

UNITS = "usr/lib/systemd/system"
TSS2 = ("libtss2-esys.so.0", "libtss2-rc.so.0", "libtss2-mu.so.0")


def with_tss2(tree: Path) -> None:
    """The TSS2 libraries systemd-pcrextend dlopens (empty files: only their presence counts)."""
    libraries = tree / "usr/lib/x86_64-linux-gnu"
    libraries.mkdir(parents=True, exist_ok=True)
    for name in TSS2:
        (libraries / name).write_bytes(b"")


def uki_disk(work: Path, uki: Path, *extra_dirs: str, tss2: bool = True) -> Path:
    """A GPT disk: 1: ESP (FAT, mtools) with the UKI as \\EFI\\BOOT\\BOOTX64.EFI; 2: an ext4
    root whose sysinit.target wants systemd 257's two root pcrphase units (with the TSS2
    libraries, or without)."""
    esp, root, disk = work / "esp.img", work / "root.img", work / "disk.raw"
    wants = work / "root" / UNITS / "sysinit.target.wants"
    wants.mkdir(parents=True)
    for unit in ("systemd-pcrphase-sysinit.service", "systemd-pcrphase.service"):
        (wants / unit).symlink_to(f"../{unit}")
    if tss2:
        with_tss2(work / "root")
    subprocess.run(["mkfs.ext4", "-q", "-d", work / "root", root, "8M"], check=True, capture_output=True)
    subprocess.run(["mkfs.vfat", "-C", esp, str(32 * 1024)], check=True, capture_output=True)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    for directory in ("::/EFI", "::/EFI/BOOT", *extra_dirs):
        subprocess.run(["mmd", "-i", esp, directory], check=True, env=env)
    subprocess.run(["mcopy", "-i", esp, uki, "::/EFI/BOOT/BOOTX64.EFI"], check=True, env=env)
    with open(disk, "wb") as file:
        file.truncate(48 * 1024 * 1024)
    subprocess.run(["sgdisk", "-n1:2048:+33M", "-t1:ef00", "-n2:0:+8M", "-t2:8304",
                    f"-u2:{ROOT_PARTUUID}", disk],
                   check=True, capture_output=True)
    with open(disk, "r+b") as file:
        file.seek(2048 * 512)
        file.write(esp.read_bytes())
        file.seek((2048 + 33 * 2048) * 512)
        file.write(root.read_bytes())
    return disk


def cpio_initrd(work: Path, tss2: bool = True) -> bytes:
    """A newc initrd (GNU cpio) in which initrd.target wants systemd-pcrphase-initrd.service."""
    tree = work / "initrd-tree"
    wants = tree / UNITS / "initrd.target.wants"
    wants.mkdir(parents=True)
    (wants / "systemd-pcrphase-initrd.service").symlink_to("../systemd-pcrphase-initrd.service")
    if tss2:
        with_tss2(tree)
    names = "\n".join(str(path.relative_to(tree)) for path in sorted(tree.rglob("*"))) + "\n"
    return subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=names.encode(), cwd=tree,
                          capture_output=True, check=True).stdout


def dumped(uki: Path, section_name: str, work: Path) -> bytes:
    """A section as binutils' objcopy reads it (VirtualSize bytes)."""
    out = work / f"section{section_name}"
    subprocess.run(["objcopy", "--dump-section", f"{section_name}={out}", uki, work / "scratch.efi"],
                   check=True, capture_output=True)
    return out.read_bytes()


def test_measure_predicts_the_uki_chain_and_leaves_an_unknown_kernel_unpredicted(tmp_path):
    uki_path = ukify(tmp_path, CMDLINE, cpio_initrd(tmp_path))
    result = run_cli("measure", uki_disk(tmp_path, uki_path), "--json")
    assert result.returncode == 1, result.stderr  # the kernel's measurements are unknown
    document = json.loads(result.stdout)
    by_pcr: dict[int, list[dict]] = {}
    for event in document["events"]:
        by_pcr.setdefault(event["pcr"], []).append(event)
    # PCR 11: name with NUL then data, per section, in systemd's order, from systemd-stub 257
    sections = [".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat"]
    digests = []
    for name in sections:
        digests += [sha384(name.encode() + b"\0"), sha384(dumped(uki_path, name, tmp_path))]
    boot, running = by_pcr[11][:len(digests)], by_pcr[11][len(digests):]
    assert [bytes.fromhex(e["sha384"]) for e in boot] == digests
    assert all(e["by"].startswith("systemd-stub 257.") and e["in_td"] for e in boot)
    # then systemd-pcrextend's words: the initrd's unit, the root's two (TPM only)
    words = ["enter-initrd", "leave-initrd", "sysinit", "ready"]
    assert [(e["description"], e["after_boot"], e["in_td"]) for e in running] == [(w, True, False) for w in words]
    digests += [sha384(word.encode()) for word in words]
    register = bytes(48)
    for digest in digests:
        register = sha384(register + digest)
    assert document["pcr_sha384"]["11"] == register.hex()
    assert document["pcr_sha384"]["12"] == "0" * 96 and document["pcr_sha384"]["8"] == "0" * 96
    # PCR 4: the UKI, then .linux loaded by the stub (the firmware measures both)
    applications = [e for e in by_pcr[4] if e["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"]
    assert [e["description"].split(" ")[0] for e in applications] == [
        "/EFI/BOOT/BOOTX64.EFI", "/EFI/BOOT/BOOTX64.EFI:.linux"]
    assert document["rtmr"]["1"] is not None
    # the kernel (here systemd-boot's PE, no bzImage header): its events are unknown
    assert document["pcr_sha384"]["9"] is None and document["rtmr"]["2"] is None
    assert "linux (version unknown)" in document["unpredicted"]["rtmr 2"]


def test_without_tss2_libraries_pcrextend_measures_no_phase(tmp_path):
    """As in the debian 13 image: the units run, pcrextend --graceful finds no libtss2 and
    leaves PCR 11 as the stub left it (seen under swtpm)."""
    uki_path = ukify(tmp_path, CMDLINE, cpio_initrd(tmp_path, tss2=False))
    result = run_cli("measure", uki_disk(tmp_path, uki_path, tss2=False), "--json")
    document = json.loads(result.stdout)
    pcr11 = [e for e in document["events"] if e["pcr"] == 11]
    assert len(pcr11) == 12 and not any(e["after_boot"] for e in pcr11)
    assert any("no phase words" in note for note in document["notes"])


def test_a_uki_with_credentials_beside_it_is_unpredicted(uki_path, tmp_path):
    disk = uki_disk(tmp_path, uki_path, "::/loader", "::/loader/credentials")
    result = run_cli("measure", disk, "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert "/loader/credentials exists on the ESP" in document["unpredicted"]["pcr 12"]
    # an addon would be loaded (PCR 4) too; the firmware's part before the UKI is still known
    assert document["pcr_sha384"]["4"] is None and document["pcr_sha384"]["5"] is not None


def versioned_stub(work: Path, version: str) -> Path:
    """The real 257 stub with its .sdmagic saying ``version`` (binutils' objcopy: the longer
    section is re-added after the last one, where a stub's own build would have it)."""
    stub = reference("trixie", "systemd-boot-efi", f"{EFI_DIR}/linuxx64.efi.stub")
    magic, changed = work / "sdmagic", work / "stub.efi"
    magic.write_bytes(f"#### LoaderInfo: systemd-stub {version} ####".encode())
    last = max(int(line.split()[3], 16) for line in subprocess.run(
        ["objdump", "-h", stub], capture_output=True, text=True, check=True).stdout.splitlines()
        if line.split()[:1] and line.split()[0].isdigit())
    subprocess.run(["objcopy", "--remove-section", ".sdmagic", "--add-section", f".sdmagic={magic}",
                    "--set-section-flags", ".sdmagic=contents,alloc,load,readonly,data",
                    "--change-section-address", f".sdmagic={last + 0x1000:#x}", stub, changed],
                   check=True, capture_output=True)
    return changed


@pytest.mark.parametrize("version, modelled", [
    ("257.9+suse.23.gc139debf2c", True),  # openSUSE:Factory's systemd 257.9 (its tarball's name)
    ("258.1+suse.4.g1e9dbf558f", False)])
def test_suse_16s_stub_version_with_its_git_suffix_is_read(tmp_path, version, modelled):
    """SUSE builds systemd with -Dversion-tag=%{version}%{?archive_version} (openSUSE systemd.spec),
    so its stub says e.g. 257.9+suse.23.gc139debf2c: a 257 is predicted, another major is null."""
    uki_path = ukify(tmp_path, CMDLINE, cpio_initrd(tmp_path), stub=versioned_stub(tmp_path, version))
    assert Uki(uki_path.read_bytes(), "suse.efi").stub.version == version
    document = json.loads(run_cli("measure", uki_disk(tmp_path, uki_path), "--json").stdout)
    stub_events = [e for e in document["events"] if e["pcr"] == 11 and not e["after_boot"]]
    if modelled:
        assert len(stub_events) == 12 and all(e["by"].startswith(f"systemd-stub {version} ")
                                              and e["in_td"] for e in stub_events)
        assert document["pcr_sha384"]["11"] is not None
    else:
        assert stub_events == [] and document["pcr_sha384"]["11"] is None
        assert f"systemd-stub {version}" in json.dumps(document["unpredicted"])


def test_measure_cloud_azure_adds_the_view_to_the_document_and_gcp_is_not_offered(uki_path, tmp_path):
    """tests/test_measure_azure.py has the view's rules; here the verb on a UKI disk."""
    disk = uki_disk(tmp_path, uki_path)
    result = CliRunner().invoke(cli.main, ["measure", str(disk), "--cloud", "azure", "--json"])
    failure = json.loads(result.stdout)  # the test UKI's kernel is unknown: exit 1, its document
    document = {key: value for key, value in failure.items() if key not in ("ok", "error", "exit_code")}
    assert result.exit_code == 1 and schema_errors("measurements", document) == []
    view = {row["register"]: row for row in document["cloud"]["registers"]}
    assert document["cloud"]["name"] == "azure" and view["PCR 4"]["status"] == "unknown"
    assert view["PCR 11"]["sha384"] == document["pcr_sha384"]["11"]
    assert "cloud" not in json.loads(CliRunner().invoke(cli.main, ["measure", str(disk), "--json"]).stdout)
    refused = CliRunner().invoke(cli.main, ["measure", str(disk), "--cloud", "gcp"])
    assert refused.exit_code == 2 and "'gcp' is not one of 'qemu', 'azure'" in refused.output
