"""Readers of a disk image, without root, mount or network: qcow2/raw/vmdk, GPT, ext4, FAT,
grub configuration, kernel config and initrd archives; `inspection` ties them into one view
that validate, measure and the VM side share."""
