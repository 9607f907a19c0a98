#!/bin/bash
# Leap/SLES-specific image setup; the shared TDX overlay's setup runs after this.
set -euxo pipefail

systemctl enable wicked.service sshd.service
# Every wired NIC (virtio-net in a TD) gets DHCP.
cat > /etc/sysconfig/network/ifcfg-eth0 <<'IFCFG'
BOOTPROTO='dhcp'
STARTMODE='auto'
IFCFG
