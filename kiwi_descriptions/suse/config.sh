#!/bin/bash
# Leap/SLES-specific image setup; the shared TDX overlay's setup runs after this.
set -euxo pipefail
# KIWI's helper functions (kiwi/config/functions.sh, copied into the image as /.kconfig).
# shellcheck source=/dev/null  # KIWI's file, only in the image root at build time
source /.kconfig

# /etc/products.d/baseproduct, which zypper, SUSEConnect and the update stack read to know
# what this system is; every SUSE KIWI description calls it (kiwi-descriptions, JeOS7).
suseSetupProduct
# Trust the distribution's signing keys (openSUSE-build-key / suse-build-key) in the image's
# rpm database, as SUSE's JeOS descriptions do.
suseImportBuildKey

systemctl enable wicked.service sshd.service
