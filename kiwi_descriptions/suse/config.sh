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

# KIWI hands zypper an authenticated repository as https://USER:PASSWORD@host (system_build.py,
# --add-repo-credentials), and libzypp keeps that password in the user's credentials file below
# the root it installs into (zypp UrlCredentialExtractor -> CredentialManager::addUserCred:
# ROOT/$HOME/.zypp/credentials.cat).  Every repository was added before this script runs.
rm -f /root/.zypp/credentials.cat

# SUSE 15 configures the network with wicked (ifcfg-lan0); SUSE 16 has NetworkManager, which
# brings up a wired NIC with DHCP without a profile.
if rpm -q --quiet NetworkManager; then
    systemctl enable NetworkManager.service sshd.service
else
    systemctl enable wicked.service sshd.service
fi
# SELinux (SUSE 16): enforcing with the targeted policy, as SUSE's own images set it (openSUSE
# kiwi-templates-Minimal config.sh).  KIWI labels every file at build time (the description's
# comment says where); a dm-verity root cannot be relabelled at boot, so no autorelabel request
# may stay behind (KIWI build-tests/x86/leap/test-image-disk-selinux config.sh).
if [ -e /etc/selinux/config ]; then
    sed -i -e 's|^SELINUX=.*|SELINUX=enforcing|' -e 's|^SELINUXTYPE=.*|SELINUXTYPE=targeted|' \
        /etc/selinux/config
    rm -f /.autorelabel
fi
# suseconnect-ng installs suseconnect-keepalive.timer (SUSE/connect-ng suseconnect-ng.spec,
# %_unitdir): a daily call from every TD to SCC.  A guest registers when its owner says so.
if [ -e /usr/lib/systemd/system/suseconnect-keepalive.timer ]; then
    systemctl mask suseconnect-keepalive.timer
fi
