"""Guests under QEMU: the launch (QEMU command line, libvirt domain, accelerator) and the boot
test that waits for the guest's self-check."""
