#!/bin/bash
# KIWI's editbootinstall hook of the UKI chain (debian 13, leap/sles 16.0): seals the root and
# writes the boot chain.  tdx-image's compose puts it into every description whose <type> names
# it, with the chain's image files (uki-root/: the dracut modules of a verity root, fstab.script).
#
# KIWI runs it on the build host (not chrooted) in the image root, after the disk's partitions are
# written: $1 is the disk file, $2 the root partition's device.  KIWI's profile settings are in the
# environment (kiwi_cmdline: <type kernelcmdline=...>).  KIWI 11.1 still holds the root and EFI
# partitions mounted here and unmounts them afterwards, which is why the root is remounted
# read-only before it is hashed (an unmount of a writable ext4 rewrites its superblock) and the
# UKI goes into the EFI partition through its mount.
#
# The chain: the firmware starts \EFI\BOOT\BOOTX64.EFI, a unified kernel image (systemd-stub +
# kernel + initrd + command line + os-release, made by the image's own ukify).  No shim, no boot
# loader: the UKI is the one binary after the firmware, systemd-stub 257 measures its sections (the
# command line among them) through the CC protocol into RTMR2 with no vTPM, and nothing on the ESP
# chooses what runs.  Secure Boot stays possible: ukify signs the same UKI
# (--secureboot-private-key/-certificate) for a db key, or shim can start it as its second stage.
#
# With a spare partition (GPT label p.spare; tdx-image build --root verity adds it) the root
# partition becomes the data device of a dm-verity hash tree written to that partition, and the
# root hash goes onto the UKI's command line: measured with it, and the only place the root is
# named.  The guest writes to
# a tmpfs laid over the read-only root (systemd.volatile=overlay): nothing persists across boots.
# Without it the root is an ordinary writable ext4 partition the host can change between boots.
set -euo pipefail

root_device=$2
kernel_cmdline=${kiwi_cmdline:?KIWI passes <type kernelcmdline=...> as kiwi_cmdline}
root_tree=$PWD
disk_device=/dev/$(lsblk -no PKNAME "$root_device")

partition() {  # partition LABEL: its device node on this disk, empty if there is none
    local node  # read from the table itself: a build host may run no udev for lsblk to ask
    for node in "$disk_device"p*; do
        if [ "$(blkid -p -s PART_ENTRY_NAME -o value "$node")" = "$1" ]; then echo "$node"; fi
    done
}
partuuid() {
    blkid -p -s PART_ENTRY_UUID -o value "$1"
}

esp=$(partition p.UEFI)
verity_hash=$(partition p.spare)
[ -n "$esp" ] || { echo "uki.sh: no EFI partition (p.UEFI) on $disk_device" >&2; exit 1; }

mounted_at() {  # mounted_at DEVICE: where the kernel has it mounted (none, one or more lines)
    findmnt -nro TARGET -S "$1" || true
}

if [ -n "$verity_hash" ]; then
    while read -r mountpoint; do
        [ -z "$mountpoint" ] || mount -o remount,ro "$mountpoint"
    done <<< "$(mounted_at "$root_device")"
    root_hash=$(veritysetup format "$root_device" "$verity_hash" | sed -n 's/^Root hash:\s*//p')
    [ -n "$root_hash" ] || { echo "uki.sh: veritysetup printed no root hash" >&2; exit 1; }
    root_arguments="root=/dev/mapper/root ro roothash=$root_hash"
    root_arguments+=" systemd.verity_root_data=PARTUUID=$(partuuid "$root_device")"
    root_arguments+=" systemd.verity_root_hash=PARTUUID=$(partuuid "$verity_hash")"
    # A block that fails its hash stops the TD (kernel panic) rather than returning an I/O error
    # the guest might work around, e.g. a configuration file that silently falls back to defaults.
    root_arguments+=" systemd.verity_root_options=panic-on-corruption systemd.volatile=overlay"
else
    root_arguments="root=PARTUUID=$(partuuid "$root_device") rw"
fi

# The kernel as /boot/vmlinuz-VERSION: Debian's file; on SUSE 16 (usr-merged) kernel-default's
# relative link to ../usr/lib/modules/VERSION/vmlinuz (its post script, kernel-source
# rpm/post.sh), beside a /boot/vmlinuz link without a version, which the pattern skips.
kernels=("$root_tree"/boot/vmlinuz-*)
[ ${#kernels[@]} -eq 1 ] && [ -f "${kernels[0]}" ] || {
    echo "uki.sh: expected one kernel in /boot, found: ${kernels[*]}" >&2; exit 1; }
version=${kernels[0]##*/vmlinuz-}
# KIWI's dracut initrd, named as the image's dracut names it (KIWI boot/image/base.py):
# initramfs-VERSION.img upstream and on Debian, initrd-VERSION on SUSE.
initrds=("$root_tree"/boot/initr*"-$version"*)
[ ${#initrds[@]} -eq 1 ] && [ -f "${initrds[0]}" ] || {
    echo "uki.sh: expected one initrd for $version in /boot, found: ${initrds[*]}" >&2; exit 1; }
initrd=${initrds[0]##*/}

uki=/var/tmp/tdx-image-uki.efi
trap 'rm -f "$root_tree$uki"' EXIT
# The image's ukify (Debian: systemd-ukify; SUSE: systemd-ukify, /usr/bin/ukify) takes the stub
# from its default /usr/lib/systemd/boot/efi/linuxx64.efi.stub (Debian: systemd-boot-efi; SUSE:
# systemd-boot), so the stub is the image's own systemd's.
chroot "$root_tree" ukify build --linux "/boot/vmlinuz-$version" --initrd "/boot/$initrd" \
    --cmdline "$kernel_cmdline $root_arguments" --os-release @/etc/os-release --uname "$version" \
    --output "$uki"

# The EFI partition's mount: the kernel's, or on a host without vfat tdx-image's esp-shim, which
# stages it in a directory it writes back at unmount (its state names device and directory).
esp_directory=$(mounted_at "$esp" | head -n 1)
if [ -z "$esp_directory" ] && [ -n "${TDX_IMAGE_ESP_STATE:-}" ]; then
    for state in "$TDX_IMAGE_ESP_STATE"/*; do
        if [ -f "$state" ] && [ "$(sed -n 1p "$state")" = "$esp" ]; then
            esp_directory=$(sed -n 2p "$state")
        fi
    done
fi
if [ -n "$esp_directory" ]; then
    install -D -m 0644 "$root_tree$uki" "$esp_directory/EFI/BOOT/BOOTX64.EFI"
else  # not mounted: write the FAT directly
    for directory in ::/EFI ::/EFI/BOOT; do
        mdir -i "$esp" "$directory" > /dev/null 2>&1 || mmd -i "$esp" "$directory"
    done
    mcopy -o -i "$esp" "$root_tree$uki" ::/EFI/BOOT/BOOTX64.EFI
fi
echo "uki.sh: \\EFI\\BOOT\\BOOTX64.EFI with command line: $kernel_cmdline $root_arguments"
