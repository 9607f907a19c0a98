#!/bin/bash
# Debian-specific image setup; the shared TDX overlay's setup runs after this.
set -euxo pipefail

systemctl enable systemd-networkd.service
# Debian's openssh-server unit is ssh.service; SSH must wait for first-boot host keys.
systemctl enable ssh.service
# KIWI syncs /boot/efi into the EFI partition: grub's packages make it, the UKI chain has none.
mkdir -p /boot/efi
# The image is up to date as built.  Without these flags systemd rebuilds the linker cache and the
# journal catalog at first boot (ConditionNeedsUpdate=), and a root that starts afresh at every
# boot (debian 13's verity root under a tmpfs) would do it at every boot.
touch /etc/.updated /var/.updated

# KIWI's apt-get reads package state from this file; a clean build leaves it empty, an incremental
# one fills it so that nothing is installed twice (imagebuilder/incremental.py): ship it empty.
if [ -f /var/lib/dpkg/status.kiwi ]; then
    : > /var/lib/dpkg/status.kiwi
fi
