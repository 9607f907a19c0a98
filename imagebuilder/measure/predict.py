"""Predict the boot measurements of an image from the image alone.

The boot path modelled is the one our images take: firmware -> ``\\EFI\\BOOT\\BOOTX64.EFI``
(shim, or grub directly) -> grub from the same directory -> the kernel grub's default entry
loads. Two views of the same boot:

- TPM (reference VM: OVMF + swtpm): PCR 4 (boot action, separator, each EFI application's
  Authenticode hash), PCR 5 (separator, GPT, ExitBootServices), PCR 8/9 (grub's commands and
  files), PCR 14 (shim's MOK lists). Verified against a real measured boot (tests/integration).
- TD (TDVF, edk2 OvmfPkg/Tcg/TdTcg2Dxe): the same events mapped PCR 2-6 -> RTMR1 and
  PCR 8-15 -> RTMR2, with one RTMR1 separator instead of one per PCR, and only from loaders
  that measure through EFI_CC_MEASUREMENT_PROTOCOL (shim 16.1 does, Debian 12's grub 2.06
  does not, so then no grub command, kernel or initrd reaches RTMR2). From the sources only: no
  TDX host was available to check it.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.inputs import read_text
from ..image.disk import ESP_TYPE, LINUX_ROOT_TYPES, Disk, RawDisk, open_disk
from ..image.filesystems import Ext4, Fat, FilesystemError
from ..image.inspection import Inspection, Unavailable
from ..schemas import SCHEMA_VERSION
from . import eventlog as ev
from .efi import EfiError, GrubImage, PeImage, Shim, gpt_event_data
from .grubscript import Grub, Unpredictable, Volume
from .reference import reference_values

REMOVABLE_LOADER = "/EFI/BOOT/BOOTX64.EFI"
SHIM_FALLBACK = "/EFI/BOOT/fbx64.efi"
GRUB_LOADER = "grubx64.efi"
CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES = (b"Exit Boot Services Invocation", b"Exit Boot Services Returned with Success")
SEPARATOR = b"\0\0\0\0"
DEBIAN_GRUB_PREFIX = "/EFI/debian"
PREDICTED_PCRS = (4, 5, 8, 9, 14)
PREDICTED_RTMRS = (1, 2)
MEASUREMENTS_MAX_BYTES = 1 << 20  # measure --json of one image is a few KiB


@dataclass(frozen=True)
class Step:
    """One measurement of the boot: the event, and whether it also reaches the TD's RTMRs."""

    event: ev.Event
    in_td: bool


@dataclass
class Prediction:
    image: str
    steps: list[Step] = field(default_factory=list)
    # register name ("pcr 8", "rtmr 2") -> why it cannot be predicted
    unpredicted: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    secure_boot: bool = False  # the VM's firmware enforces Secure Boot (see _secure_boot_kernel)

    def add(self, pcr: int, event_type: int, description: str, data: bytes,
            in_td: bool = True, digest: bytes | None = None) -> None:
        """The next event: ``data`` measured (or its ``digest``); ``in_td``: it also reaches
        the TD's RTMRs."""
        self.steps.append(Step(ev.Event(pcr, event_type, description, digest or ev.sha384(data)), in_td))

    @property
    def events(self) -> list[ev.Event]:
        return [step.event for step in self.steps]

    @property
    def td_events(self) -> list[tuple[int, ev.Event]]:
        """(RTMR, event) in TD order: TDVF measures a single separator, into RTMR1."""
        ordered, separated = [], False
        for step in self.steps:
            rtmr = ev.rtmr_of_pcr(step.event.pcr)
            if not step.in_td or rtmr not in PREDICTED_RTMRS:
                continue
            if step.event.event_type == ev.EV_SEPARATOR:
                if separated:
                    continue
                separated = True
            ordered.append((rtmr, step.event))
        return ordered

    def pcr(self, index: int) -> str | None:
        if f"pcr {index}" in self.unpredicted:
            return None
        return ev.replay(e.digest for e in self.events if e.pcr == index).hex()

    def rtmr(self, index: int) -> str | None:
        if f"rtmr {index}" in self.unpredicted:
            return None
        return ev.replay(e.digest for rtmr, e in self.td_events if rtmr == index).hex()

    def reference_values(self) -> dict:
        """The image's registers in verifiers' shapes (measure/reference.py)."""
        return reference_values({f"rtmr{index}": self.rtmr(index) for index in PREDICTED_RTMRS})

    def go_tdx_guest_flags(self) -> str:
        """go-tdx-guest ``check -rtmrs``: four comma-separated values, empty = unchecked
        (RTMR0 depends on the firmware and VM shape, RTMR3 is for the running system)."""
        return self.reference_values()["go-tdx-guest"]

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "image": self.image,
            "secure_boot": self.secure_boot,
            "rtmr": {str(i): self.rtmr(i) for i in PREDICTED_RTMRS},
            "pcr_sha384": {str(i): self.pcr(i) for i in PREDICTED_PCRS},
            "unpredicted": self.unpredicted,
            "verifier": {"go_tdx_guest_check": self.go_tdx_guest_flags(),
                         "not_covered": "MRTD and RTMR0 depend on the TDVF build and the VM "
                                        "shape, not on the image: the verifier supplies them",
                         "reference_values": self.reference_values()},
            "notes": self.notes,
            # TPM order; "in_td": whether the loader also measures it into an RTMR
            "events": [{**step.event.to_dict(), "in_td": step.in_td} for step in self.steps],
            "rtmr_events": [{**event.to_dict(), "rtmr": rtmr} for rtmr, event in self.td_events],
            "seconds": round(self.seconds, 2),
        }


class FatVolume:
    def __init__(self, fat: Fat, uuid: str):
        self.fat, self.uuid = fat, uuid

    def kind(self, path: str) -> str | None:
        if not self.fat.exists(path):
            return None
        return "file" if self.fat.read(path) is not None else "dir"

    def read(self, path: str) -> bytes | None:
        return self.fat.read(path)


class Ext4Volume:
    def __init__(self, ext4: Ext4):
        self.ext4, self.uuid = ext4, ext4.uuid

    def kind(self, path: str) -> str | None:
        entry = self.ext4.lookup(path)
        if entry is None:
            return None
        return "file" if entry.is_file else "dir"

    def read(self, path: str) -> bytes | None:
        return self.ext4.read(path)


def fat_serial(disk: Disk, offset: int) -> str:
    """The volume serial grub's ``search --fs-uuid`` matches on FAT: XXXX-XXXX."""
    boot = disk.read(offset, 512)
    serial_at = 0x43 if boot[0x52:0x57] == b"FAT32" else 0x27
    serial = int.from_bytes(boot[serial_at : serial_at + 4], "little")
    return f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"


def grub_volumes(inspection: Inspection) -> dict[str, Volume]:
    """grub's names for the partitions it can read on the only disk: (hd0,gptN)."""
    volumes: dict[str, Volume] = {}
    for part in inspection.partitions:
        device = f"hd0,gpt{part.number}"
        try:
            if part.type_guid == ESP_TYPE:
                volumes[device] = FatVolume(Fat(inspection.disk, part.offset),
                                            fat_serial(inspection.disk, part.offset))
            elif part.type_guid in LINUX_ROOT_TYPES:
                volumes[device] = Ext4Volume(Ext4(inspection.disk, part.offset))
        except FilesystemError:
            continue  # grub cannot read it either; a search simply does not find it there
    return volumes


def memdisk_volume(grub: GrubImage, workdir: Path) -> FatVolume | None:
    image = grub.memdisk
    if image is None:
        return None
    path = workdir / "memdisk.img"
    path.write_bytes(image)
    disk = RawDisk(path)
    return FatVolume(Fat(disk, 0), fat_serial(disk, 0))


def read_esp_file(inspection: Inspection, path: str) -> bytes:
    data = inspection.esp.read(path)
    if data is None:
        raise Unpredictable(f"the EFI system partition has no {path}")
    return data


def predict(image: Path, secure_boot: bool = False) -> Prediction:
    """The measurements a boot of ``image`` produces (in a VM whose firmware enforces Secure
    Boot with ``secure_boot``); InputError if it cannot be read at all."""
    with closing(open_disk(Path(image))) as disk:
        try:
            return predict_inspected(str(image), Inspection(disk), secure_boot)
        except Unavailable as missing:
            raise InputError(f"{image}: {missing}", "is it a UEFI disk image built by tdx-image?")


def predict_inspected(name: str, inspection: Inspection, secure_boot: bool = False) -> Prediction:
    """The same, for an image the validator is already reading: Unavailable (the validator
    skips the check) when the image has no boot path to predict."""
    started = time.monotonic()
    prediction = Prediction(name, secure_boot=secure_boot)
    with tempfile.TemporaryDirectory(prefix="tdx-measure-") as workdir:
        _predict_into(prediction, inspection, Path(workdir))
    prediction.seconds = time.monotonic() - started
    return prediction


def _predict_into(prediction: Prediction, inspection: Inspection, workdir: Path) -> None:
    add = prediction.add
    # Firmware (OVMF Tcg2Dxe / TDVF TdTcg2Dxe) on ReadyToBoot, then the GPT of the boot disk.
    add(4, ev.EV_EFI_ACTION, CALLING_EFI_APPLICATION.decode(), CALLING_EFI_APPLICATION)
    add(4, ev.EV_SEPARATOR, "separator", SEPARATOR)
    add(5, ev.EV_SEPARATOR, "separator", SEPARATOR)
    inspection.esp  # no intact GPT or no readable ESP: not an image this boot path applies to
    add(5, ev.EV_EFI_GPT_EVENT, "GPT header and used partition entries", gpt_event_data(inspection.disk))
    try:
        loader = PeImage(read_esp_file(inspection, REMOVABLE_LOADER), REMOVABLE_LOADER)
        add(4, ev.EV_EFI_BOOT_SERVICES_APPLICATION, f"{REMOVABLE_LOADER} (Authenticode)", b"",
            digest=loader.authenticode_sha384)
        grub_td = _boot_loaders(prediction, inspection, loader, workdir)
    except (Unpredictable, EfiError) as error:
        # Registers whose events may be missing: grub's always, shim's and grub's application
        # hash if the chain broke before they were measured.
        affected = ["pcr 8", "pcr 9", "rtmr 2"]
        if not any(step.event.pcr == 14 for step in prediction.steps):
            affected.append("pcr 14")
        applications = [s for s in prediction.steps if s.event.event_type == ev.EV_EFI_BOOT_SERVICES_APPLICATION]
        if len(applications) < 2:
            affected += ["pcr 4", "rtmr 1"]
        prediction.unpredicted.update({register: str(error) for register in affected})
    else:
        if not grub_td:
            prediction.notes.append(
                "grub does not measure through EFI_CC_MEASUREMENT_PROTOCOL: in a TD its commands, "
                "the kernel command line, kernel and initrd reach no RTMR (RTMR2 holds shim's MOK "
                "lists only); the TPM view has them in PCR 8 and 9")
    # grub (or the kernel's EFI stub) calls ExitBootServices; the firmware measures it.
    for action in EXIT_BOOT_SERVICES:
        add(5, ev.EV_EFI_ACTION, action.decode(), action)


def _boot_loaders(prediction: Prediction, inspection: Inspection, loader: PeImage,
                  workdir: Path) -> bool:
    """shim's and grub's measurements; returns whether grub's reach the TD's RTMRs."""
    add = prediction.add
    shim_td = loader.measures_into_rtmrs
    if loader.section(".vendor_cert") is not None:
        if inspection.esp.exists(SHIM_FALLBACK):
            raise Unpredictable(f"{SHIM_FALLBACK} exists: shim would start the fallback loader "
                                "(which writes boot entries and resets) instead of grub")
        shim = Shim(loader.data, REMOVABLE_LOADER)
        for mok in shim.mok_events():
            add(14, ev.EV_IPL, mok.name, mok.data, in_td=shim_td)
        path = REMOVABLE_LOADER.rsplit("/", 1)[0] + "/" + GRUB_LOADER
        grub = GrubImage(read_esp_file(inspection, path), path)
        add(4, ev.EV_EFI_BOOT_SERVICES_APPLICATION, f"{path} (Authenticode, measured by shim)",
            b"", in_td=shim_td, digest=grub.authenticode_sha384)
        if not shim_td:
            prediction.notes.append("shim does not measure through EFI_CC_MEASUREMENT_PROTOCOL: "
                                    "in a TD, grub and the MOK lists reach no RTMR")
    else:
        grub = GrubImage(loader.data, REMOVABLE_LOADER)
    grub_td = grub.measures_into_rtmrs
    esp = inspection.esp_partition
    interpreter = Grub(grub_volumes(inspection), boot_device=f"hd0,gpt{esp.number}",
                       boot_dir=REMOVABLE_LOADER.rsplit("/", 1)[0], prefix=grub.prefix,
                       memdisk=memdisk_volume(grub, workdir), features=grub.feature_variables,
                       has_module=grub.has_module)
    for event in interpreter.boot(grub.embedded_config):
        add(event.pcr, ev.EV_IPL, event.description, event.data, in_td=grub_td)
    if prediction.secure_boot:
        _secure_boot_kernel(prediction, grub, interpreter)
    return grub_td


def _secure_boot_kernel(prediction: Prediction, grub: GrubImage, interpreter: Grub) -> None:
    """With Secure Boot enforced, Debian's grub 2.06 starts the kernel through LoadImage
    (its ``linux`` becomes ``linuxefi``), and PCR 4 gets the kernel's Authenticode SHA-384
    twice: seen in the guest's own event log of a swtpm boot (`boot --tpm --secure-boot`),
    one from shim's verification hook and one from the firmware's LoadImage. Other grubs'
    Secure Boot paths are not modelled."""
    if grub.prefix != DEBIAN_GRUB_PREFIX or interpreter.kernel is None:
        raise Unpredictable(f"grub with prefix {grub.prefix!r} under Secure Boot: how it starts "
                            "the kernel is modelled for Debian's grub only")
    path, data = interpreter.kernel
    kernel = PeImage(data, path).authenticode_sha384
    for measured_by in ("shim's verification", "the firmware's LoadImage"):
        prediction.add(4, ev.EV_EFI_BOOT_SERVICES_APPLICATION,
                       f"{path} (Authenticode, Secure Boot: {measured_by})", b"", digest=kernel)


def load_measurements(path: Path, read=lambda document: document) -> dict:
    """A measurements file (``measure --json``, measurements.json) as ``read`` takes it apart;
    InputError when it is not one (``read`` raises KeyError, ValueError or TypeError)."""
    text = read_text(path, "--measurements", MEASUREMENTS_MAX_BYTES)
    try:
        return read(json.loads(text))
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"--measurements {path}: not a measurements file ({error!r})",
                         "give the output of tdx-image measure --json or a build's measurements.json")


def load_registers(path: Path) -> dict:
    """``rtmr`` and ``pcr_sha384`` of a measurements file."""
    return load_measurements(path, lambda document: {
        "rtmr": {str(i): document["rtmr"][str(i)] for i in PREDICTED_RTMRS},
        "pcr_sha384": {str(i): document["pcr_sha384"][str(i)] for i in PREDICTED_PCRS}})


def registers_differ(expected: dict, prediction: Prediction) -> list[str]:
    """Registers whose value in ``expected`` (load_registers) is not what the image measures."""
    actual = prediction.to_dict()
    return [f"{'RTMR' if kind == 'rtmr' else 'PCR'} {index}"
            for kind in ("rtmr", "pcr_sha384") for index, value in expected[kind].items()
            if value is None or value != actual[kind][index]]
