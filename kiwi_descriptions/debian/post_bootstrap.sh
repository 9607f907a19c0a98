#!/bin/bash
# Runs in the image root after KIWI's bootstrap, before the image packages are installed: keep out
# of the image what a TD guest never uses, so it is neither installed nor shipped.
set -euxo pipefail

# dpkg honours these for every later package install and upgrade, in the build and in the guest.
cat > /etc/dpkg/dpkg.cfg.d/90-tdx-guest-excludes <<'EXCLUDES'
# tdx-image: a TD guest carries no documentation, manual pages or translations (licences stay),
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
# and no drivers for hardware a TD cannot have: it sees virtio devices (and passed-through PCI
# functions) only, never a display, sound, camera, radio or sensor.  Bookworm's kernel packages
# ship /lib/modules (the merged /usr makes it /usr/lib/modules): both spellings are excluded.
path-exclude=/lib/modules/*/kernel/drivers/gpu/*
path-exclude=/usr/lib/modules/*/kernel/drivers/gpu/*
path-exclude=/lib/modules/*/kernel/drivers/media/*
path-exclude=/usr/lib/modules/*/kernel/drivers/media/*
path-exclude=/lib/modules/*/kernel/drivers/net/wireless/*
path-exclude=/usr/lib/modules/*/kernel/drivers/net/wireless/*
path-exclude=/lib/modules/*/kernel/drivers/bluetooth/*
path-exclude=/usr/lib/modules/*/kernel/drivers/bluetooth/*
path-exclude=/lib/modules/*/kernel/drivers/iio/*
path-exclude=/usr/lib/modules/*/kernel/drivers/iio/*
path-exclude=/lib/modules/*/kernel/drivers/staging/*
path-exclude=/usr/lib/modules/*/kernel/drivers/staging/*
path-exclude=/lib/modules/*/kernel/sound/*
path-exclude=/usr/lib/modules/*/kernel/sound/*
path-exclude=/lib/modules/*/kernel/net/wireless/*
path-exclude=/usr/lib/modules/*/kernel/net/wireless/*
path-exclude=/lib/modules/*/kernel/net/mac80211/*
path-exclude=/usr/lib/modules/*/kernel/net/mac80211/*
path-exclude=/lib/modules/*/kernel/net/bluetooth/*
path-exclude=/usr/lib/modules/*/kernel/net/bluetooth/*
EXCLUDES

# The same for what the bootstrap packages already unpacked.
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/man /usr/share/info /usr/share/lintian -mindepth 1 -delete 2>/dev/null || true
find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
