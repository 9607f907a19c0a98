#!/bin/bash
# Shared TDX guest setup; tdx-image runs it inside the image root after the target's config.sh.
set -euxo pipefail

systemd-sysusers /usr/lib/sysusers.d/tdx-guest.conf
systemctl enable tdx-selfcheck.service tdx-ssh-hostkeys.service

# Nothing that identifies or unlocks one machine is baked into an image shared by many:
# host keys are generated at first boot, machine-id is set at first boot, root has no password.
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
: > /etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
    rm -f /var/lib/dbus/machine-id
fi
usermod --password '!*' root
