import pytest

from imagebuilder.core.errors import InputError
from imagebuilder.distros.clouds import CLOUDS, GIB, MIB, QEMU, get_cloud


def test_no_cloud_is_todays_qemu_image():
    assert get_cloud(None) is QEMU
    assert QEMU.kiwi_format is None and QEMU.datasource is None


def test_unknown_cloud_names_the_known_ones():
    with pytest.raises(InputError, match="qemu, gcp, azure"):
        get_cloud("aws")


def test_cloud_rules_from_the_clouds_import_documents():
    assert CLOUDS["gcp"].size_multiple == GIB and "nvme" in CLOUDS["gcp"].initrd_drivers
    assert "TDX_CAPABLE" in CLOUDS["gcp"].guest_os_features
    assert CLOUDS["azure"].size_multiple == MIB and not CLOUDS["azure"].emulated
    assert CLOUDS["azure"].kiwi_format_options == "force_size"
