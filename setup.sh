#!/bin/bash
# Set up a Debian 12 build host for tdx-image and build the reference image:
#   sudo ./setup.sh              host packages + .venv, then `tdx-image build debian` into out/debian
#   sudo ./setup.sh --no-build   host packages + .venv only
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
    echo "error: setup installs Debian packages and builds with KIWI: run it as root (sudo ./setup.sh)" >&2
    exit 3
fi

# What KIWI calls for a Debian disk image (binutils: strings), the UKI chain's hook uki.sh
# (cryptsetup-bin: veritysetup for a verity root; util-linux: lsblk, findmnt), the ESP fallback
# (mtools), the validator (qemu-utils, lz4) and its tests (e2fsprogs, mtools, cpio, compressors), the boot test (qemu, OVMF;
# swtpm for the measured boot of `boot --tpm`) and --container (podman with runc; mmdebstrap
# makes the local Debian 12 container image).
# openssh-client: the integration test that logs into a running image.
# python3-pefile: ukify (systemd 257, from tests/fetch-reference-packages.sh) for the UKI tests.
host_packages=(
    python3 python3-venv debian-archive-keyring ca-certificates
    apt dpkg binutils gdisk dosfstools e2fsprogs rsync qemu-utils util-linux mount
    mtools zstd xz-utils gzip lz4 bzip2 cpio fdisk cryptsetup-bin
    qemu-system-x86 ovmf swtpm openssh-client
    podman runc mmdebstrap python3-pefile
)
missing=()
for package in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/tdx-image ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "setup: creating .venv (kiwi, click, rich, pytest from PyPI)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -e '.[test]'
    touch .venv/.installed
fi

# Real EFI binaries and firmware the fast tests of measure read (a UKI made by ukify with
# systemd-stub 257, the 252 stub, trixie's OVMF): unpacked, not installed; tests skip without.
if [ ! -d /var/cache/tdx-image/reference-packages/bookworm/shim-signed ]; then
    echo "setup: fetching the reference EFI binaries and firmware the tests read (tests/fetch-reference-packages.sh)"
    tests/fetch-reference-packages.sh
fi

if [ "${1:-}" != "--no-build" ]; then
    exec .venv/bin/tdx-image build debian
fi
