"""What to run next with a cloud image: the upload, image and launch commands, as data.

``build --cloud gcp|azure`` prints them and records them in build.json (``cloud.next_steps``);
tdx-image never runs them (no cloud account, no credentials on the build host).  What the user
must choose is a placeholder in capitals (BUCKET, PROJECT, RESOURCE_GROUP, ...); the image's file
name, an image name and version are filled in.

Flags as Google's and Microsoft's references name them (README "Running on a cloud" says which
were read and which are unverified): ``gcloud compute images create`` (--source-uri,
--guest-os-features), ``gcloud compute instances create`` (--confidential-compute-type=TDX,
--maintenance-policy=TERMINATE: a TD cannot live-migrate), ``az storage blob upload --type page``
(Azure creates disks from page blobs), ``az sig image-definition create --features
SecurityType=ConfidentialVMSupported``, ``az vm create --security-type ConfidentialVM``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ..distros.clouds import AZURE, GCP, Cloud

# Google Cloud's smallest TDX machine type (C3) and Azure's (DCesv5).
GCP_TDX_MACHINE = "c3-standard-4"
AZURE_TDX_SIZE = "Standard_DC2es_v5"


@dataclass(frozen=True)
class Step:
    purpose: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def to_dict(self) -> dict:
        return {"purpose": self.purpose, "command": self.command}


def image_name(image_file: str) -> str:
    """A name both clouds take for ``tdx-guest-debian-13.x86_64-13.0.0.tar.gz``:
    ``tdx-guest-debian-13-13-0-0`` (Google: lower case, digits and hyphens, a letter first,
    at most 63 characters; Azure's gallery image definitions take the same)."""
    stem = re.sub(r"\.(tar\.gz|vhd|qcow2|raw|vmdk)$", "", image_file)
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower().replace(".x86_64-", "-")).strip("-")
    return name[:63].rstrip("-")


def next_steps(cloud: Cloud, image_file: str, version: str) -> list[Step]:
    """The commands that take ``image_file`` (as published) to a running TD on ``cloud``; none
    for a cloud without an import (qemu: ``tdx-image run`` boots it here)."""
    name = image_name(image_file)
    if cloud is GCP:
        uri = f"gs://BUCKET/{image_file}"
        return [
            Step("upload the image to a Cloud Storage bucket",
                 ("gcloud", "storage", "cp", image_file, uri)),
            Step("create the image, with the guest OS features a TDX Confidential VM needs",
                 ("gcloud", "compute", "images", "create", name, "--project=PROJECT",
                  f"--source-uri={uri}",
                  f"--guest-os-features={','.join(cloud.guest_os_features)}")),
            Step("launch a TD (TDX machines cannot live-migrate: TERMINATE on host maintenance)",
                 ("gcloud", "compute", "instances", "create", "INSTANCE", "--project=PROJECT",
                  "--zone=ZONE", f"--machine-type={GCP_TDX_MACHINE}",
                  "--confidential-compute-type=TDX", "--maintenance-policy=TERMINATE",
                  f"--image={name}", "--image-project=PROJECT")),
        ]
    if cloud is AZURE:
        definition = name.removesuffix("-" + version.replace(".", "-"))
        blob = f"https://STORAGE_ACCOUNT.blob.core.windows.net/CONTAINER/{image_file}"
        gallery = ("--resource-group", "RESOURCE_GROUP", "--gallery-name", "GALLERY",
                   "--gallery-image-definition", definition)
        return [
            Step("upload the fixed VHD as a page blob",
                 ("az", "storage", "blob", "upload", "--account-name", "STORAGE_ACCOUNT",
                  "--container-name", "CONTAINER", "--name", image_file, "--file", image_file,
                  "--type", "page")),
            Step("define the gallery image: generation 2, confidential-VM capable",
                 ("az", "sig", "image-definition", "create", *gallery, "--publisher", "PUBLISHER",
                  "--offer", definition, "--sku", version, "--os-type", "Linux",
                  "--os-state", "Generalized", "--hyper-v-generation", "V2",
                  "--features", "SecurityType=ConfidentialVMSupported")),
            Step("create the image version from the uploaded VHD",
                 ("az", "sig", "image-version", "create", *gallery,
                  "--gallery-image-version", version, "--os-vhd-uri", blob,
                  "--os-vhd-storage-account", "STORAGE_ACCOUNT")),
            Step("launch a TDX confidential VM with the paravisor's vTPM (Secure Boot off: "
                 "debian 13's UKI is signed by no key Azure trusts)",
                 ("az", "vm", "create", "--resource-group", "RESOURCE_GROUP", "--name", "VM_NAME",
                  "--image", f"/subscriptions/SUBSCRIPTION/resourceGroups/RESOURCE_GROUP/providers/"
                  f"Microsoft.Compute/galleries/GALLERY/images/{definition}/versions/{version}",
                  "--size", AZURE_TDX_SIZE, "--security-type", "ConfidentialVM",
                  "--os-disk-security-encryption-type", "VMGuestStateOnly",
                  "--enable-vtpm", "true", "--enable-secure-boot", "false",
                  "--admin-username", "USER", "--ssh-key-values", "SSH_PUBLIC_KEY_FILE")),
        ]
    return []
