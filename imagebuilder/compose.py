"""Compose the description KIWI builds: the target's description plus the shared TDX overlay.

KIWI has no flag to add an overlay, so the driver writes a temporary description directory:
the target's files, the overlay's ``root/`` tree merged into ``root/`` (KIWI's own overlay
mechanism), and a ``config.sh`` that runs the target's setup and then the overlay's.  The
overlay's files are recorded with their digests inside the image
(``/usr/lib/tdx-image/overlay-manifest.json``) so a validator can prove they are there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .inputs import read_text

MANIFEST_PATH = "usr/lib/tdx-image/overlay-manifest.json"
SSH_KEY_MAX_BYTES = 256 * 1024  # an authorized_keys file of a few hundred keys
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519@", "sk-ecdsa-sha2-")


@dataclass(frozen=True)
class Composition:
    path: Path
    overlay_files: dict[str, dict]  # image path -> {"sha256", "mode"}


def compose(description: Path, overlay: Path, destination: Path,
            ssh_key: Path | None = None) -> Composition:
    """Write the composed description to ``destination`` (which must not exist)."""
    shutil.copytree(description, destination, symlinks=True)
    overlay_root = overlay / "root"
    files = _overlay_manifest(overlay_root)
    shutil.copytree(overlay_root, destination / "root", symlinks=True, dirs_exist_ok=True)
    manifest = destination / "root" / MANIFEST_PATH
    manifest.write_text(json.dumps({"overlay": overlay.name, "files": files}, indent=2,
                                   sort_keys=True) + "\n")
    _compose_config_sh(destination / "config.sh",
                       [description / "config.sh", overlay / "config.sh"])
    if ssh_key:
        _authorize_ssh_key(ssh_key, destination / "root" / "root" / ".ssh")
    return Composition(destination, files)


def _overlay_manifest(overlay_root: Path) -> dict[str, dict]:
    files = {}
    for path in sorted(overlay_root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files["/" + path.relative_to(overlay_root).as_posix()] = {
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "mode": oct(path.stat().st_mode & 0o7777),
            }
    return files


def _compose_config_sh(destination: Path, fragments: list[Path]) -> None:
    """One config.sh running each existing fragment in its own subshell, in order.

    A subshell keeps one fragment's ``exit`` or shell options from skipping the next.
    """
    parts = ["#!/bin/bash", "# Composed by tdx-image: target setup, then the shared overlay.",
             "set -euo pipefail"]
    for fragment in fragments:
        if fragment.is_file():
            parts += [f"# ---- {fragment.parent.name}/{fragment.name}", "(",
                      fragment.read_text().rstrip("\n"), ")"]
    destination.write_text("\n".join(parts) + "\n")
    destination.chmod(0o755)


def read_ssh_keys(key_file: Path) -> list[str]:
    """The OpenSSH public keys in ``key_file`` (a .pub or authorized_keys file)."""
    text = read_text(key_file, "--ssh-key", SSH_KEY_MAX_BYTES)
    keys = [line.strip() for line in text.splitlines() if line.strip()]
    if not keys or not all(key.startswith(SSH_KEY_TYPES) for key in keys):
        raise InputError(f"{key_file} is not an OpenSSH public key file",
                         "pass the .pub file, never the private key")
    return keys


def _authorize_ssh_key(key_file: Path, ssh_dir: Path) -> None:
    keys = read_ssh_keys(key_file)
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text("\n".join(keys) + "\n")
    os.chmod(authorized, 0o600)
