#!/bin/bash
# Debian-specific image setup; the shared TDX overlay's setup runs after this.
set -euxo pipefail

systemctl enable systemd-networkd.service
# Debian's openssh-server unit is ssh.service; SSH must wait for first-boot host keys.
systemctl enable ssh.service
