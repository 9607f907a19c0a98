#!/bin/sh
# Runs once per builder image, inside the target's own container image (`podman build`): the
# host tools KIWI and the validator call, and Python 3.11 with KIWI in /opt/tdx-image from the
# wheels tdx-image made on the host (the host's pip already reaches PyPI, so the container
# needs no Python network access).  The project itself is mounted at build time, not copied.
set -eu
here=$(dirname "$0")
if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # setup.sh's build and validation tools, without the boot test's QEMU and OVMF.
    apt-get install -y -q --no-install-recommends python3 python3-venv debian-archive-keyring \
        ca-certificates apt dpkg binutils gdisk dosfstools e2fsprogs rsync qemu-utils util-linux mount \
        mtools zstd xz-utils gzip lz4 bzip2 cpio fdisk
    apt-get clean
    python=python3
elif command -v zypper >/dev/null 2>&1; then
    # The same tools by their openSUSE/SLE names; zypper and rpm are the image's own.  Python:
    # 3.11 on SUSE 15 (python311), 3.13 on SUSE 16 (python313); wheels for both are here.
    if zypper --non-interactive search --match-exact python311 >/dev/null 2>&1; then
        version=311
    else
        version=313
    fi
    zypper --non-interactive install --no-recommends "python$version" "python$version-pip" \
        qemu-tools binutils gptfdisk dosfstools e2fsprogs rsync util-linux mtools zstd xz gzip \
        lz4 bzip2 cpio
    zypper clean --all
    python=python3.${version#3}
else
    echo "error: the container image has neither apt-get nor zypper" >&2
    exit 3
fi
"$python" -m venv /opt/tdx-image
/opt/tdx-image/bin/pip install --quiet --no-index --find-links "$here/wheels" -r "$here/requirements.txt"
