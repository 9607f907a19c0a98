"""``build --cloud``: the setting, what the composition carries for each cloud, the published
name and the commands printed for what comes next (issue 19's build half)."""

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from imagebuilder.build import cloudcommands, provenance, publish, sbom, settings
from imagebuilder.build.compose import (CLOUD_DRACUT_CONF, CLOUD_INIT_DATASOURCE, Customisation,
                                        compose)
from imagebuilder.build.kiwicheck import check_description
from imagebuilder.build.pipeline import BuildRequest, cloud_record
from imagebuilder.commands.build import show_next_steps
from imagebuilder.core.console import Console
from imagebuilder.schemas import schema
from imagebuilder.build.staging import kiwi_image_file, published_image_file
from imagebuilder.cli import main
from imagebuilder.core.errors import InputError
from imagebuilder.core.paths import SHARED_OVERLAY
from imagebuilder.distros.clouds import AZURE, CLOUDS, GCP, QEMU
from imagebuilder.distros.targets import TARGETS, get_target

MIRROR = "http://mirror.invalid"  # never contacted: KIWI's checks are offline


def composed(tmp_path: Path, target: str, cloud: str, **custom) -> Path:
    description = get_target(target).description_dir
    return compose(description, SHARED_OVERLAY, tmp_path / f"{target}-{cloud}",
                   Customisation(cloud=cloud, **custom)).path


@pytest.mark.parametrize("cloud", [GCP, AZURE], ids=lambda cloud: cloud.name)
@pytest.mark.parametrize("target", ["debian", "leap", "sles"])
def test_a_cloud_composition_carries_its_format_drivers_and_datasource(tmp_path, target, cloud):
    description = composed(tmp_path, target, cloud.name)

    config = ET.parse(description / "config.xml").getroot()
    for image_type in config.iterfind("preferences/type"):
        assert image_type.get("format") == cloud.kiwi_format
        assert image_type.get("formatoptions") == cloud.kiwi_format_options  # azure: force_size
        assert "console=ttyS0,115200" in image_type.get("kernelcmdline").split()
    assert "cloud-init" in [p.get("name") for p in config.iter("package")]
    drivers = (description / "root" / CLOUD_DRACUT_CONF).read_text()
    assert re.search(r'^add_drivers\+=" (.*) "$', drivers, re.MULTILINE).group(1).split() == \
        list(cloud.initrd_drivers)
    datasource = description / "root" / CLOUD_INIT_DATASOURCE
    assert f"datasource_list: [ {cloud.datasource} ]\n" in datasource.read_text()
    # cloud-init reads cloud.cfg.d in name order, the last list winning: after Debian's debconf
    # list (90_dpkg.cfg) and cloud-init's own 05_logging.cfg.
    assert max(datasource.name, "90_dpkg.cfg", "05_logging.cfg") == datasource.name


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_kiwi_accepts_the_cloud_composition(tmp_path, cloud):
    target = TARGETS["debian"]
    description = composed(tmp_path, "debian", cloud, root="verity")
    check_description(description, target.profile, target.repositories(MIRROR))


def test_qemu_composes_todays_image(tmp_path):
    description = composed(tmp_path, "debian", "qemu")
    assert (description / "config.xml").read_text() == \
        (TARGETS["debian"].description_dir / "config.xml").read_text()
    assert not (description / "root" / CLOUD_DRACUT_CONF).exists()
    assert not (description / "root" / CLOUD_INIT_DATASOURCE).exists()


def test_the_debian_initrd_list_is_exclusive_so_the_cloud_drivers_must_be_added():
    # What makes the cloud's dracut file necessary: without it the initrd holds these alone.
    conf = (TARGETS["debian"].description_dir / "root/etc/dracut.conf.d/80-tdx-guest-initrd.conf")
    listed = re.search(r'^drivers\+=" (.*) "$', conf.read_text(), re.MULTILINE).group(1).split()
    assert not set(GCP.initrd_drivers + AZURE.initrd_drivers) & set(listed)


@pytest.mark.parametrize("size_mib, ok", [(4096, True), (5120, True), (5000, False), (4097, False)])
def test_google_cloud_takes_whole_gib_disks_only(size_mib, ok):
    if ok:
        Customisation(cloud="gcp", size_mib=size_mib)
    else:
        with pytest.raises(InputError, match="whole number of GiB") as refused:
            Customisation(cloud="gcp", size_mib=size_mib)
        assert refused.value.hint == f"give --size {-(-size_mib // 1024)}G"
    Customisation(cloud="azure", size_mib=size_mib)  # any --size is whole MiB


def test_the_verity_hash_partition_is_carved_out_of_the_gcp_disk(tmp_path):
    """KIWI's disk is <size> exactly (not additive): the spare partition does not grow it."""
    config = ET.parse(composed(tmp_path, "debian", "gcp", root="verity", size_mib=6144)
                      / "config.xml").getroot()
    for image_type in config.iterfind("preferences/type"):
        assert image_type.find("size").attrib == {"unit": "M"}
        assert int(image_type.find("size").text) * 2**20 % GCP.size_multiple == 0
        assert "additive" not in image_type.find("size").attrib
        assert int(image_type.get("spare_part")) > 0


def test_a_description_size_that_is_not_whole_gib_is_refused_for_gcp(tmp_path):
    description = tmp_path / "description"
    compose(TARGETS["debian"].description_dir, SHARED_OVERLAY, description)
    config = description / "config.xml"
    config.write_text(config.read_text().replace('<size unit="G">4</size>', '<size unit="M">4000</size>'))
    with pytest.raises(InputError, match="4000M is not"):
        compose(description, SHARED_OVERLAY, tmp_path / "again", Customisation(cloud="gcp"))


def test_a_missing_serial_console_is_added_for_a_cloud(tmp_path):
    description = tmp_path / "description"
    compose(TARGETS["leap"].description_dir, SHARED_OVERLAY, description)
    config = description / "config.xml"
    config.write_text(config.read_text().replace('kernelcmdline="console=ttyS0,115200"',
                                                 'kernelcmdline="quiet console=tty0"'))
    image_type = ET.parse(compose(description, SHARED_OVERLAY, tmp_path / "again",
                                  Customisation(cloud="azure")).path / "config.xml").find("preferences/type")
    assert image_type.get("kernelcmdline") == "quiet console=tty0 console=ttyS0,115200"


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
@pytest.mark.parametrize("disk_format", ["qcow2", "raw", "vmdk"])
def test_a_format_that_contradicts_the_cloud_is_one_error_line(tmp_path, monkeypatch, cloud, disk_format):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["build", "debian", "--dry-run", "--cloud", cloud,
                                       "--format", disk_format])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and f"--format {disk_format} contradicts --cloud {cloud}" in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_cloud_setting_is_configurable_recorded_and_handed_to_the_container(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tdx-image.toml").write_text('cloud = "azure"\n')
    result = CliRunner().invoke(main, ["summary", "debian", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["settings"]["cloud"] == {"value": "azure", "from": "tdx-image.toml"}
    assert plan["image"]["file"] == "tdx-guest-debian-13.x86_64-13.0.0.vhd"
    assert plan["image"]["format"] == "vhd-fixed" and "cloud-init" in plan["image"]["packages"]

    request = BuildRequest(target=get_target("debian"), out_dir=tmp_path / "out",
                           custom=Customisation(cloud="gcp"))
    assert settings.recorded(request)["cloud"] == "gcp"
    assert settings.arguments(request.custom) == ["--cloud", "gcp"]
    assert settings.arguments(Customisation()) == []  # qemu is the default: nothing to pass
    assert settings.BY_FIELD["cloud"].summary and settings.BY_FIELD["cloud"].recorded


@pytest.mark.parametrize("kiwi_format, cloud, published", [
    ("gce", GCP, "tdx-guest-debian-13.x86_64-13.0.0.tar.gz"),
    ("vhd-fixed", AZURE, "tdx-guest-debian-13.x86_64-13.0.0.vhd"),
    ("qcow2", QEMU, "tdx-guest-debian-13.x86_64-13.0.0.qcow2"),
])
def test_the_image_is_published_under_the_cloud_suffix(tmp_path, kiwi_format, cloud, published):
    kiwi_file = kiwi_image_file("tdx-guest-debian-13", "13.0.0", kiwi_format)
    assert published_image_file(kiwi_file, cloud) == published
    target, publish_dir = tmp_path / "kiwi", tmp_path / "publish"
    target.mkdir()
    publish_dir.mkdir()
    results = {}
    for key, name in (("disk_format_image", kiwi_file), ("disk_image", "disk.raw"),
                      ("image_packages", "img.packages")):
        (target / name).write_text(name)
        results[key] = {"filename": str(target / name)}
    (target / "kiwi.result.json").write_text(json.dumps(results))

    artifacts = publish.collect(target, publish_dir, cloud)

    assert artifacts["image"] == publish_dir / published
    assert artifacts["image"].read_text() == kiwi_file
    record = json.loads((publish_dir / "kiwi.result.json").read_text())
    assert record["disk_format_image"]["filename"] == published


def test_the_gcp_commands_upload_create_and_launch_the_published_file():
    image = "tdx-guest-debian-13.x86_64-13.0.0.tar.gz"
    upload, create, launch = [step.command for step in cloudcommands.next_steps(GCP, image, "13.0.0")]
    assert upload == f"gcloud storage cp {image} gs://BUCKET/{image}"
    assert create == ("gcloud compute images create tdx-guest-debian-13-13-0-0 --project=PROJECT "
                      f"--source-uri=gs://BUCKET/{image} "
                      "--guest-os-features=UEFI_COMPATIBLE,GVNIC,TDX_CAPABLE")
    assert launch.startswith("gcloud compute instances create INSTANCE ")
    for flag in ("--confidential-compute-type=TDX", "--machine-type=c3-standard-4",
                 "--maintenance-policy=TERMINATE", "--image=tdx-guest-debian-13-13-0-0"):
        assert f" {flag}" in launch
    # Google's image names: a lower-case letter first, lower case, digits and hyphens, <= 63.
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", cloudcommands.image_name(image))


def test_the_azure_commands_make_a_confidential_gallery_image_from_a_page_blob():
    image = "tdx-guest-sles-16.0.x86_64-16.0.0.vhd"
    upload, definition, version, launch = cloudcommands.next_steps(AZURE, image, "16.0.0")
    assert upload.argv[:4] == ("az", "storage", "blob", "upload")
    assert "--type page" in upload.command and f"--file {image}" in upload.command
    assert "--gallery-image-definition tdx-guest-sles-16-0" in definition.command
    for words in ("--features SecurityType=ConfidentialVMSupported", "--hyper-v-generation V2",
                  "--os-state Generalized", "--os-type Linux"):
        assert words in definition.command
    assert "--gallery-image-version 16.0.0" in version.command
    assert f"--os-vhd-uri https://STORAGE_ACCOUNT.blob.core.windows.net/CONTAINER/{image}" in version.command
    for words in ("--security-type ConfidentialVM", "--os-disk-security-encryption-type VMGuestStateOnly",
                  "--size Standard_DC2es_v5", "--enable-vtpm true",
                  "galleries/GALLERY/images/tdx-guest-sles-16-0/versions/16.0.0"):
        assert words in launch.command


@pytest.mark.parametrize("cloud, boot_test, not_run", [
    ("azure", True, True), ("azure", False, False), ("gcp", True, False), ("qemu", True, False)])
def test_build_json_says_why_no_boot_test_ran_and_what_to_run_next(tmp_path, cloud, boot_test, not_run):
    request = BuildRequest(target=get_target("debian"), out_dir=tmp_path, boot_test=boot_test,
                           custom=Customisation(cloud=cloud))
    record = cloud_record(request, "img.vhd")
    assert record["name"] == cloud
    assert (record["boot_test_not_run"] is not None) == not_run
    if not_run:
        assert "VMBus devices (storvsc disk, netvsc NIC) cannot be emulated by QEMU" in record["boot_test_not_run"]
    assert [step["command"] for step in record["next_steps"]] == [
        step.command for step in cloudcommands.next_steps(CLOUDS[cloud], "img.vhd", "13.0.0")]
    build_schema = schema("build")
    assert not list(Draft202012Validator(build_schema["properties"]["cloud"]).iter_errors(record))


def test_the_build_prints_the_next_steps_and_says_it_runs_none():
    console = Console(file=io.StringIO(), width=100)
    request = BuildRequest(target=get_target("debian"), out_dir=Path("out"), custom=Customisation(cloud="gcp"))
    show_next_steps(console, cloud_record(request, "img.tar.gz"))
    printed = console.file.getvalue()
    assert "not run by tdx-image" in printed
    assert "gcloud storage cp img.tar.gz gs://BUCKET/img.tar.gz\n" in printed
    show_next_steps(console := Console(file=io.StringIO()), cloud_record(
        BuildRequest(target=get_target("debian"), out_dir=Path("out")), "img.qcow2"))
    assert console.file.getvalue() == ""


def test_qemu_has_no_cloud_commands():
    assert cloudcommands.next_steps(QEMU, "x.qcow2", "13.0.0") == []
    assert set(CLOUDS) == {"qemu", "gcp", "azure"}


@pytest.mark.parametrize("image", ["tdx-guest-debian-13.x86_64-13.0.0.tar.gz",
                                   "tdx-guest-debian-13.x86_64-13.0.0.vhd",
                                   "tdx-guest-debian-13.x86_64-13.0.0.qcow2"])
def test_the_provenance_shares_the_sboms_name_whatever_the_images_suffix(image, tmp_path):
    written = provenance.write(tmp_path / image, {})
    assert written.name == "tdx-guest-debian-13.x86_64-13.0.0.provenance.json"
    assert written.name.removesuffix(provenance.SUFFIX) + sbom.SUFFIXES["spdx"] == (
        "tdx-guest-debian-13.x86_64-13.0.0.spdx.json")
