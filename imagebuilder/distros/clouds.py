"""Where an image runs: the cloud profiles (``--cloud qemu|gcp|azure``) as data.

A profile decides what the image must carry and how it is packed for the place it boots: the
disk format KIWI writes, the drivers the initrd needs for the disk and network the cloud
attaches, the console, and the cloud-init datasource. The build composes from it, ``validate``
checks an image against it before a slow, billed upload, and ``boot`` attaches the disk the way
the cloud does where QEMU can emulate it.

Sources: Google Cloud, "Import a custom image" and "Confidential VM: supported configurations"
(NVMe boot disk, gVNIC, a gzipped tar holding ``disk.raw`` whose size is a whole number of GiB,
guest OS features set at image creation); Azure, "Prepare a Linux VHD" and "Confidential VM
images" (a fixed VHD whose virtual size is a whole number of MiB, the Hyper-V drivers in the
initrd, a generation 2 image with a confidential-VM security type).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import InputError

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class Cloud:
    name: str  # as users write it after --cloud
    title: str
    # KIWI's <type format=...> and formatoptions=; None: the user's --format (qcow2 by default).
    kiwi_format: str | None
    kiwi_format_options: str | None
    # The published disk's file name ends with it (KIWI writes a fixed VHD as .vhdfixed; Azure's
    # tools and docs call it .vhd); None: the format's own.
    artifact_suffix: str | None
    # Kernel modules the initrd must hold (or the kernel have built in) to reach the boot disk
    # and the network the cloud attaches.
    initrd_drivers: tuple[str, ...]
    disk_interface: str  # how the cloud attaches the boot disk: virtio, nvme, vmbus
    size_multiple: int  # the disk's size in bytes must be a multiple of this
    datasource: str | None  # cloud-init's datasource_list entry; None: no cloud-init
    # Google Cloud's --guest-os-features for the image (set at `gcloud compute images create`).
    guest_os_features: tuple[str, ...] = ()
    emulated: bool = True  # QEMU can attach the disk and NIC the way the cloud does
    # The serial port the cloud shows as the VM's console (Google Cloud's serial port 1 and
    # Azure's serial console are both the first UART): the kernel command line's console=.
    console: str = "ttyS0"


QEMU = Cloud("qemu", "QEMU/KVM on a TDX host (libvirt or plain QEMU)", None, None, None,
             initrd_drivers=("virtio_blk", "virtio_net"), disk_interface="virtio",
             size_multiple=MIB, datasource=None)
GCP = Cloud("gcp", "Google Cloud Confidential VM (TDX)", "gce", None, ".tar.gz",
            initrd_drivers=("nvme", "gve"), disk_interface="nvme", size_multiple=GIB,
            datasource="GCE", guest_os_features=("UEFI_COMPATIBLE", "GVNIC", "TDX_CAPABLE"))
# Azure's TDX confidential VMs run the guest behind a paravisor on VMBus devices, which QEMU
# cannot emulate: the image is checked offline only.
AZURE = Cloud("azure", "Azure confidential VM (TDX, DCesv5/ECesv5)", "vhd-fixed", "force_size",
              ".vhd", initrd_drivers=("hv_vmbus", "hv_storvsc", "hv_netvsc"),
              disk_interface="vmbus", size_multiple=MIB, datasource="Azure", emulated=False)

CLOUDS = {cloud.name: cloud for cloud in (QEMU, GCP, AZURE)}


def get_cloud(name: str | None) -> Cloud:
    """The profile named ``name``; None is today's image for QEMU."""
    if name is None:
        return QEMU
    try:
        return CLOUDS[name]
    except KeyError:
        raise InputError(f"unknown cloud {name!r}", f"choose one of: {', '.join(CLOUDS)}")
