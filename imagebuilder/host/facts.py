"""The facts verbs and requirement probes ask of this host, in one object.

``HostFacts`` reads the real host, each fact when first asked (then kept: one verb sees one
host, and the KVM probe starts QEMU once).  Everything that decides whether a verb may run on
this host comes through it, so tests give a host of their own (tests/conftest.py ``FakeHost``)
instead of patching modules; the CLI hands it to every verb as click's context object.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from . import buildhost, os_release, runner, virt


class HostFacts:
    @cached_property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    @cached_property
    def family(self) -> str | None:
        """debian, fedora or suse (os-release's ID/ID_LIKE), None for any other."""
        return os_release.host_family()

    @cached_property
    def kiwi_command(self) -> str:
        """kiwi-ng's path; a HostError when it is not installed."""
        return buildhost.kiwi_command()

    @cached_property
    def kiwi_version(self) -> str:
        return buildhost.kiwi_version()

    @cached_property
    def mounts_vfat(self) -> bool:
        return buildhost.kernel_mounts_vfat()

    @cached_property
    def cpu_vendor(self) -> str:
        return virt.cpu_vendor()

    @cached_property
    def kvm_tdx(self) -> str:
        """kvm_intel's tdx parameter: 'Y', 'N', or "" when kvm_intel is not loaded."""
        return virt.kvm_tdx_enabled()

    @cached_property
    def qemu_version(self) -> str:
        return virt.qemu_version()

    @cached_property
    def qemu_has_tdx_guest(self) -> bool:
        return virt.qemu_has_tdx_guest()

    @cached_property
    def kvm_failure(self) -> str | None:
        """Why KVM cannot run a UEFI guest here, or None when it can (starts the firmware once)."""
        return virt.kvm_failure()

    @cached_property
    def ovmf(self) -> virt.Firmware | None:
        """The host's UEFI firmware for a plain VM."""
        return virt.find_ovmf()

    @cached_property
    def secure_boot_ovmf(self) -> virt.Firmware | None:
        """The host's UEFI firmware that enforces Secure Boot (the reference VM's alternative)."""
        return virt.find_secure_boot_ovmf()

    @cached_property
    def tdvf(self) -> Path | None:
        """The host's TDX firmware."""
        return virt.find_tdvf()

    def missing(self, tools: Iterable[str]) -> list[str]:
        """Those of ``tools`` that are not on PATH."""
        return runner.missing(tools)

    def install_hint(self, *tools: str) -> str:
        return runner.install_hint(*tools, family=self.family)

    def firmware_install_hint(self) -> str:
        return virt.firmware_install_hint(self.family)

    def has_device(self, path: str) -> bool:
        return os.path.exists(path)

    def free_bytes(self, path: Path) -> int:
        return shutil.disk_usage(path).free

    def is_tdvf(self, firmware: Path) -> bool:
        return virt.is_tdvf(firmware)

    def td_measured_boot(self, firmware: Path) -> bool | None:
        """Whether a TD booted with ``firmware`` records its boot in RTMRs (TdTcg2Dxe)."""
        return virt.td_measured_boot(firmware)

    def td_firmware_note(self, firmware: Path) -> str | None:
        """What ``firmware`` means for attestation when it records no RTMR events, else None."""
        return virt.td_firmware_note(firmware, self.td_measured_boot(firmware))

    def build_host_problem(self, target) -> str | None:
        """Why this host cannot build ``target`` natively, or None when it can."""
        return buildhost.build_host_problem(target)
