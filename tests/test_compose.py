"""Composing target description + shared overlay into the directory KIWI builds."""

import hashlib
import json
import subprocess

import pytest

from imagebuilder.compose import MANIFEST_PATH, compose
from imagebuilder.errors import InputError
from imagebuilder.targets import SHARED_OVERLAY, TARGETS


@pytest.mark.parametrize("name", sorted({t.description for t in TARGETS.values()}))
def test_compose_layers_overlay_and_chains_config_scripts(tmp_path, name):
    description = TARGETS[[n for n, t in TARGETS.items() if t.description == name][0]].description_dir
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
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample user@host\n")
    composition = compose(TARGETS["debian"].description_dir, SHARED_OVERLAY, tmp_path / "d", key)
    authorized = composition.path / "root/root/.ssh/authorized_keys"
    assert authorized.read_text() == key.read_text()
    assert oct(authorized.stat().st_mode & 0o777) == "0o600"
    assert oct(authorized.parent.stat().st_mode & 0o777) == "0o700"


def test_private_key_is_refused(tmp_path):
    key = tmp_path / "id"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn...\n")
    with pytest.raises(InputError, match="not an OpenSSH public key"):
        compose(TARGETS["debian"].description_dir, SHARED_OVERLAY, tmp_path / "d", key)
