"""Where one build assembles its output: a directory beside ``--out`` (the same filesystem, so
one rename publishes it).  Every path a build makes there, and the name of every file it
publishes, is named here once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..distros.clouds import Cloud
from .kiwi import IMAGE_ROOT

BUILD_RECORD = "build.json"  # the record of what was built from what; lists every published file
FAILURE_RECORD = "failure.json"  # in OUT.failed: why the build failed
PUBLISHED_DESCRIPTION = "description"  # the only directory a build publishes
OWNER = "tdx-image-build.json"  # in a staging directory: which build made it
# KIWI's file name suffix for a disk format, where it is not the format's name
# (kiwi/storage/subformat: gce writes NAME.tar.gz, vhd-fixed NAME.vhdfixed).
KIWI_SUFFIXES = {"gce": "tar.gz", "vhd-fixed": "vhdfixed"}


def kiwi_image_file(name: str, version: str, disk_format: str) -> str:
    """The disk image KIWI writes for ``<image name=...>``, its <version> and format."""
    return f"{name}.x86_64-{version}.{KIWI_SUFFIXES.get(disk_format, disk_format)}"


def published_image_file(kiwi_file: str, cloud: Cloud) -> str:
    """The name the disk image is published under: KIWI's, ending as the cloud's tools expect
    (``.vhdfixed`` becomes ``.vhd``)."""
    suffix = cloud.artifact_suffix
    if suffix is None or kiwi_file.endswith(suffix):
        return kiwi_file
    return kiwi_file.rsplit(".", 1)[0] + suffix


def artifact_base(image_file: str) -> str:
    """``NAME.x86_64-VERSION``: the published image's name without its format suffix (a GCE
    image's ``.tar.gz`` is one), which every file about the image (SBOMs, provenance) shares."""
    return image_file.removesuffix(".tar.gz") if image_file.endswith(".tar.gz") else \
        image_file.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Staging:
    root: Path

    # What the steps work in.
    @property
    def description(self) -> Path:  # the composed description KIWI builds
        return self.root / "description"

    @property
    def kiwi_target(self) -> Path:  # KIWI's --target-dir
        return self.root / "kiwi"

    @property
    def image_root(self) -> Path:  # KIWI's image root inside its target directory
        return self.kiwi_target / IMAGE_ROOT

    @property
    def credentials(self) -> Path:  # "user:password" for KIWI, mode 0600
        return self.root / "credentials"

    @property
    def kiwi_temp(self) -> Path:  # KIWI's --temp-dir
        return self.root / "kiwi-tmp"

    @property
    def owner(self) -> Path:  # says the directory is a tdx-image build's (recover.py)
        return self.root / OWNER

    @property
    def esp_fallback(self) -> Path:  # the vfat mount shim's PATH and state (kiwi.HOSTSHIM)
        return self.root / "esp-fallback"

    # The incremental build (incremental.py): the packages-only description that prepares a root,
    # the root it prepares, and the description KIWI then builds on that root.
    @property
    def packages_description(self) -> Path:
        return self.root / "description-packages"

    @property
    def prepared_root(self) -> Path:
        return self.root / "prepare" / "root"

    @property
    def incremental_description(self) -> Path:
        return self.root / "description-incremental"

    # What --out becomes, file by file.
    @property
    def publish(self) -> Path:
        return self.root / "publish"

    @property
    def build_log(self) -> Path:  # KIWI's full, redacted debug log
        return self.publish / "build.log"

    @property
    def prepare_log(self) -> Path:  # the incremental prepare run's log
        return self.publish / "prepare.log"

    @property
    def build_record(self) -> Path:
        return self.publish / BUILD_RECORD

    @property
    def published_description(self) -> Path:
        return self.publish / PUBLISHED_DESCRIPTION

    @property
    def validation(self) -> Path:
        return self.publish / "validation.json"

    @property
    def validation_junit(self) -> Path:
        return self.publish / "validation.junit.xml"

    @property
    def measurements(self) -> Path:
        return self.publish / "measurements.json"

    @property
    def boot_record(self) -> Path:
        return self.publish / "boot.json"

    @property
    def boot_console(self) -> Path:
        return self.publish / "boot-console.log"

    @property
    def failed(self) -> Path:  # a failed build's logs and reports, before they become OUT.failed
        return self.root / "failed"
