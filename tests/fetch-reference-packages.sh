#!/bin/bash
# Reference binaries for the fast tests of `measure` and of the firmware reader, downloaded
# with apt-get download and unpacked with dpkg-deb -x -- never installed:
#   trixie:   systemd-boot-efi + systemd-ukify 257 (a real UKI), ovmf 2025.02 (has TdTcg2Dxe),
#             grub-efi-amd64-signed 2.12
#   bookworm: systemd-boot-efi 252 (a stub without CC measurement), grub-efi-amd64-signed 2.06,
#             shim-signed 16.1
# trixie comes from the mirror the host's apt already uses (its first Debian URI), through a
# private apt configuration in a temporary directory; the host's apt state is not touched.
# Usage: tests/fetch-reference-packages.sh [DIR]   (default /var/cache/tdx-image/reference-packages)
# Tests that need a package skip when its directory is missing.
# DIR is replaced package by package only when this script made it (its marker file is there, or
# it holds nothing but this script's suite directories, as before the marker) or it is absent or
# empty: a directory of someone else's is refused (exit 2), never overwritten.
set -euo pipefail

target=${1:-/var/cache/tdx-image/reference-packages}
marker=.tdx-image-reference-packages
ours() {
    [ ! -e "$target" ] && return 0
    [ -d "$target" ] && [ ! -L "$target" ] || return 1
    [ -e "$target/$marker" ] && return 0
    local entry
    for entry in "$target"/* "$target"/.[!.]*; do
        [ -e "$entry" ] || continue
        case ${entry##*/} in trixie | bookworm) ;; *) return 1 ;; esac
    done
}
if ! ours; then
    echo "error: $target holds files this script did not write (no $marker in it); give an empty or new DIR" >&2
    exit 2
fi
trixie_packages=(systemd-boot-efi systemd-ukify ovmf grub-efi-amd64-signed)
bookworm_packages=(systemd-boot-efi grub-efi-amd64-signed shim-signed)

mirror_uri() {
    local files=(/etc/apt/sources.list.d/*.sources /etc/apt/sources.list)
    local uri
    uri=$(grep -hs '^URIs:' "${files[@]}" | awk '$2 ~ /\/debian\/?$/ {print $2; exit}')
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' "${files[@]}" | awk '$2 ~ /\/debian\/?$/ {print $2; exit}')
    printf '%s' "$uri"
}

uri=$(mirror_uri)
if [ -z "$uri" ]; then
    echo "error: no Debian mirror in the host's apt sources" >&2
    exit 3
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/parts" "$work/prefs" \
         "$work/trixie" "$work/bookworm"
cat > "$work/parts/trixie.sources" <<EOF
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cat > "$work/apt.conf" <<EOF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$work/parts";
Dir::Etc::PreferencesParts "$work/prefs";
Dir::State::Lists "$work/lists";
Dir::Cache "$work/cache";
EOF

APT_CONFIG="$work/apt.conf" apt-get update -q -o APT::Sandbox::User=root >/dev/null
(cd "$work/trixie" && APT_CONFIG="$work/apt.conf" apt-get download -q -o APT::Sandbox::User=root "${trixie_packages[@]}" >/dev/null)
(cd "$work/bookworm" && apt-get download -q -o APT::Sandbox::User=root "${bookworm_packages[@]}" >/dev/null)

mkdir -p "$target"
touch "$target/$marker"
for suite in trixie bookworm; do
    for deb in "$work/$suite"/*.deb; do
        name=$(dpkg-deb -f "$deb" Package)
        rm -rf "${target:?}/$suite/$name"
        mkdir -p "$target/$suite/$name"
        dpkg-deb -x "$deb" "$target/$suite/$name"
        echo "$suite/$name $(dpkg-deb -f "$deb" Version)"
    done
done
