"""Composing target description + shared overlay into the directory KIWI builds."""

import hashlib
import json
import subprocess
import xml.etree.ElementTree as ET

import pytest

from imagebuilder.build.compose import MANIFEST_PATH, Customisation, compose, described_format
from imagebuilder.core.errors import InputError
from imagebuilder.build.kiwicheck import check_description
from imagebuilder.distros.targets import TARGETS
from imagebuilder.core.paths import SHARED_OVERLAY

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample user@host\n"
MIRROR = "http://mirror.invalid"  # never contacted: KIWI's checks are offline


@pytest.mark.parametrize("name", sorted({t.description for t in TARGETS.values()}))
def test_compose_layers_overlay_and_chains_config_scripts(tmp_path, name):
    description = next(t for t in TARGETS.values() if t.description == name).description_dir
    composition = compose(description, SHARED_OVERLAY, tmp_path / "d")
    config_sh = (composition.path / "config.sh").read_text()
    # Target setup first, then the overlay's; each fragment intact and the whole valid bash.
    assert config_sh.index(f"# ---- {name}/config.sh") < config_sh.index("# ---- tdx/config.sh")
    assert (SHARED_OVERLAY / "config.sh").read_text().strip() in config_sh
    subprocess.run(["bash", "-n", composition.path / "config.sh"], check=True)
    for image_path, entry in composition.overlay_files.items():
        placed = composition.path / "root" / image_path.lstrip("/")
        assert hashlib.sha256(placed.read_bytes()).hexdigest() == entry["sha256"]
    manifest = json.loads((composition.path / "root" / MANIFEST_PATH).read_text())
    assert manifest["files"] == composition.overlay_files
    assert "/usr/lib/tdx-image/tdx-selfcheck" in manifest["files"]
    assert manifest["files"]["/usr/lib/tdx-image/tdx-selfcheck"]["mode"] == "0o755"


def test_ssh_key_is_authorized_with_private_permissions(tmp_path):
    key = tmp_path / "id.pub"
    key.write_text(KEY)
    composition = compose(TARGETS["debian"].description_dir, SHARED_OVERLAY, tmp_path / "d",
                          Customisation(ssh_key=key))
    assert (composition.path / "config.xml").read_text() == \
        (TARGETS["debian"].description_dir / "config.xml").read_text()  # untouched for root
    authorized = composition.path / "root/root/.ssh/authorized_keys"
    assert authorized.read_text() == key.read_text()
    assert oct(authorized.stat().st_mode & 0o777) == "0o600"
    assert oct(authorized.parent.stat().st_mode & 0o777) == "0o700"


def test_private_key_is_refused(tmp_path):
    key = tmp_path / "id"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn...\n")
    with pytest.raises(InputError, match="not an OpenSSH public key"):
        compose(TARGETS["debian"].description_dir, SHARED_OVERLAY, tmp_path / "d",
                Customisation(ssh_key=key))


@pytest.mark.parametrize("name, disk_format", [("debian", "vmdk"), ("leap", "raw")])
def test_customisations_become_kiwi_elements_that_kiwi_accepts(tmp_path, name, disk_format):
    target = TARGETS[name]
    key = tmp_path / "id.pub"
    key.write_text(KEY)
    custom = Customisation(packages=("jq", "zstd"), size_mib=6144, image_format=disk_format,
                           ssh_key=key, ssh_user="tester")

    composition = compose(target.description_dir, SHARED_OVERLAY, tmp_path / "d", custom)

    config = composition.path / "config.xml"
    image = ET.parse(config).getroot()
    shared = [p for p in image.iterfind("packages") if p.get("type") == "image" and not p.get("profiles")]
    names = [p.get("name") for p in shared[0].iterfind("package")]
    assert names.count("jq") == 1 and names.count("zstd") == 1  # zstd was already there (debian)
    for image_type in image.iterfind("preferences/type"):
        assert (image_type.find("size").get("unit"), image_type.find("size").text) == ("M", "6144")
    assert described_format(config) == disk_format
    user = image.find("users/user")
    assert (user.get("name"), user.get("home"), user.get("password")) == ("tester", "/home/tester", "*")
    assert (composition.path / "root/home/tester/.ssh/authorized_keys").read_text() == KEY
    assert not (composition.path / "root/root/.ssh").exists()
    # sshd reads the key as the user: config.sh (last, after the overlay's) hands it over.
    config_sh = (composition.path / "config.sh").read_text()
    assert config_sh.index("# ---- tdx/config.sh") < config_sh.index('chown -R "tester:" "/home/tester/.ssh"')
    assert "<!--" in config.read_text()  # the description's comments are kept
    # KIWI's own schema and runtime checks accept the result.
    check_description(composition.path, target.profile, target.repositories(MIRROR))


def test_without_customisation_the_description_is_copied_unchanged(tmp_path):
    composition = compose(TARGETS["leap"].description_dir, SHARED_OVERLAY, tmp_path / "d")
    assert (composition.path / "config.xml").read_bytes() == \
        (TARGETS["leap"].description_dir / "config.xml").read_bytes()
    assert described_format(composition.path / "config.xml") == "qcow2"


def test_a_description_without_an_image_type_is_an_input_error(tmp_path):
    config_xml = tmp_path / "config.xml"
    config_xml.write_text('<image schemaversion="8.0" name="x"><preferences/></image>\n')
    with pytest.raises(InputError, match="has no <preferences><type>"):
        described_format(config_xml)
