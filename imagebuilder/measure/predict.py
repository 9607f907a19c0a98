"""Predict the boot measurements of an image from the image alone.

The boot paths modelled are the ones our images take, from ``\\EFI\\BOOT\\BOOTX64.EFI``:

- shim (or grub directly) -> grub from the same directory -> the kernel grub's default entry
  loads: PCR 4 (boot action, separator, each EFI application's Authenticode hash), PCR 5
  (separator, GPT, ExitBootServices), PCR 8/9 (grub's commands and files), PCR 14 (shim's MOK
  lists);
- a UKI started by the firmware itself (systemd-stub 257, uki.py): PCR 4 also holds the UKI and
  its ``.linux`` (loaded by the stub), PCR 11 the UKI's sections, PCR 9 the kernel EFI stub's
  LoadOptions and initrd; PCR 12 stays empty (no command line is passed in).

Two views of the same boot: the TPM of the reference VM (OVMF + swtpm; verified against real
measured boots, tests/integration), and a TD without vTPM (TDVF with TdTcg2Dxe): the events of
components that measure through EFI_CC_MEASUREMENT_PROTOCOL there (components.py says which, by
version) mapped PCR 2-6 -> RTMR1 and PCR 8-15 -> RTMR2, with one RTMR1 separator instead of one
per PCR. The TD view is from the sources only: no TDX host was available to check it.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.inputs import parse_json, read_text
from ..image.disk import ESP_TYPE, LINUX_ROOT_TYPES, Disk, RawDisk, open_disk
from ..image.filesystems import Ext4, Fat, FilesystemError
from ..image.initrd import InitrdError, initrd_members
from ..image.inspection import Inspection, Unavailable
from ..schemas import SCHEMA_VERSION
from . import components
from . import eventlog as ev
from .efi import EfiError, GrubImage, PeImage, Shim, gpt_event_data
from .grubscript import Grub, Unpredictable, Volume
from .reference import reference_values
from .uki import INITRD_PHASES, ROOT_PHASES, SYSTEMD_UNITS, Uki, measures_phases

REMOVABLE_LOADER = "/EFI/BOOT/BOOTX64.EFI"
SHIM_FALLBACK = "/EFI/BOOT/fbx64.efi"
GRUB_LOADER = "grubx64.efi"
CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES = (b"Exit Boot Services Invocation", b"Exit Boot Services Returned with Success")
SEPARATOR = b"\0\0\0\0"
DEBIAN_GRUB_PREFIX = "/EFI/debian"
PREDICTED_PCRS = (4, 5, 8, 9, 11, 12, 14)
FIRMWARE = "firmware (edk2 Tcg2Dxe; TdTcg2Dxe in a TD)"
# What systemd-stub would pick up from the ESP next to a UKI started as BOOTX64.EFI (stub.c
# load_all_addons, generate_sidecar_initrds): addons (PCR 4 and 12), credentials (PCR 12),
# sysexts (PCR 13), confexts (PCR 12). Not modelled.
STUB_SIDECARS = ("/loader/addons", "/loader/credentials", REMOVABLE_LOADER + ".extra.d")
PREDICTED_RTMRS = (1, 2)
MEASUREMENTS_MAX_BYTES = 1 << 20  # measure --json of one image is a few KiB


@dataclass(frozen=True)
class Step:
    """One measurement of the boot: the event, whether it also reaches the RTMRs of a TD
    without vTPM, and who measures it (component, version, why)."""

    event: ev.Event
    in_td: bool
    by: str = FIRMWARE
    after_boot: bool = False  # measured by the running system: in no firmware event log


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
            in_td: bool = True, digest: bytes | None = None, by: str = FIRMWARE,
            after_boot: bool = False) -> None:
        """The next event: ``data`` measured (or its ``digest``); ``in_td``: it also reaches
        the TD's RTMRs; ``by``: the component that measures it."""
        event = ev.Event(pcr, event_type, description, digest or ev.sha384(data))
        self.steps.append(Step(event, in_td, by, after_boot))

    def measured_by(self, component: components.Component, registers: list[str]) -> bool:
        """Whether ``component``'s events reach the TD's RTMRs; when nobody established it,
        ``registers`` are unpredicted (never guessed) and the events count as not reaching."""
        if component.in_td is None:
            self.unpredicted.update({register: component.why for register in registers})
        return bool(component.in_td)

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
            "events": [{**step.event.to_dict(), "in_td": step.in_td, "by": step.by,
                        "after_boot": step.after_boot} for step in self.steps],
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


def predict(image: Path, secure_boot: bool = False, allow_backing: bool = False) -> Prediction:
    """The measurements a boot of ``image`` produces (in a VM whose firmware enforces Secure
    Boot with ``secure_boot``); InputError if it cannot be read at all.  ``allow_backing``:
    the user named the image's backing files as theirs (--allow-backing-file)."""
    with closing(open_disk(Path(image), allow_backing)) as disk:
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
    systemd, uki = False, None
    try:
        loader = PeImage(read_esp_file(inspection, REMOVABLE_LOADER), REMOVABLE_LOADER)
        add(4, ev.EV_EFI_BOOT_SERVICES_APPLICATION, f"{REMOVABLE_LOADER} (Authenticode)", b"",
            digest=loader.authenticode_sha384)
        systemd = components.systemd_efi_binary(loader) is not None
        if systemd:
            uki = _systemd_boot(prediction, inspection, loader)
        else:
            _boot_loaders(prediction, inspection, loader, workdir)
    except (Unpredictable, EfiError) as error:
        # Registers whose events may be missing: the later loaders' always, shim's and grub's
        # application hash if the chain broke before they were measured.
        affected = ["pcr 9", "pcr 11", "pcr 12", "rtmr 2"] if systemd else ["pcr 8", "pcr 9", "rtmr 2"]
        if not systemd and not any(step.event.pcr == 14 for step in prediction.steps):
            affected.append("pcr 14")
        applications = [s for s in prediction.steps if s.event.event_type == ev.EV_EFI_BOOT_SERVICES_APPLICATION]
        if len(applications) < 2:
            affected += ["pcr 4", "rtmr 1"]
        prediction.unpredicted.update({register: str(error) for register in affected})
    # grub (or the kernel's EFI stub) calls ExitBootServices; the firmware measures it.
    for action in EXIT_BOOT_SERVICES:
        add(5, ev.EV_EFI_ACTION, action.decode(), action)
    if uki is not None:
        _pcr_phases(prediction, inspection, uki)


def _boot_loaders(prediction: Prediction, inspection: Inspection, loader: PeImage,
                  workdir: Path) -> None:
    """shim's and grub's measurements."""
    add = prediction.add
    if loader.section(".vendor_cert") is not None:
        if inspection.esp.exists(SHIM_FALLBACK):
            raise Unpredictable(f"{SHIM_FALLBACK} exists: shim would start the fallback loader "
                                "(which writes boot entries and resets) instead of grub")
        shim = Shim(loader.data, REMOVABLE_LOADER)
        component = components.shim(shim)
        shim_td = prediction.measured_by(component, ["rtmr 1", "rtmr 2"])
        for mok in shim.mok_events():
            add(14, ev.EV_IPL, mok.name, mok.data, in_td=shim_td, by=component.label)
        path = REMOVABLE_LOADER.rsplit("/", 1)[0] + "/" + GRUB_LOADER
        grub = GrubImage(read_esp_file(inspection, path), path)
        add(4, ev.EV_EFI_BOOT_SERVICES_APPLICATION, f"{path} (Authenticode, measured by shim)",
            b"", in_td=shim_td, digest=grub.authenticode_sha384, by=component.label)
        if component.in_td is False:
            prediction.notes.append(f"{component.label}: {component.why}: in a TD, grub and the "
                                    "MOK lists reach no RTMR")
    else:
        grub = GrubImage(loader.data, REMOVABLE_LOADER)
    component = components.grub(grub)
    grub_td = prediction.measured_by(component, ["rtmr 2"])
    if component.in_td is False:
        prediction.notes.append(
            f"{component.label}: {component.why}. In a TD without vTPM its commands, the kernel "
            "command line, kernel and initrd reach no RTMR (RTMR2 holds shim's MOK lists only); "
            "the TPM view (and a vTPM) has them in PCR 8 and 9")
    esp = inspection.esp_partition
    interpreter = Grub(grub_volumes(inspection), boot_device=f"hd0,gpt{esp.number}",
                       boot_dir=REMOVABLE_LOADER.rsplit("/", 1)[0], prefix=grub.prefix,
                       memdisk=memdisk_volume(grub, workdir), features=grub.feature_variables,
                       has_module=grub.has_module)
    for event in interpreter.boot(grub.embedded_config):
        add(event.pcr, ev.EV_IPL, event.description, event.data, in_td=grub_td, by=component.label)
    if prediction.secure_boot:
        _secure_boot_kernel(prediction, grub, interpreter)


def _systemd_boot(prediction: Prediction, inspection: Inspection, loader: PeImage) -> Uki:
    """A UKI the firmware starts directly: systemd-stub's and the kernel EFI stub's events,
    and the firmware's measurement of the kernel the stub loads (uki.py)."""
    if prediction.secure_boot:
        prediction.unpredicted.update(dict.fromkeys(
            ["pcr 4", "rtmr 1"], "Secure Boot on: systemd-stub's security override skips the "
            "firmware's measurement of .linux, which is not modelled"))
    kind = components.systemd_efi_binary(loader)
    if kind is None or kind[0] != "systemd-stub":
        raise Unpredictable(f"{REMOVABLE_LOADER} is {' '.join(kind or ('unknown',))}: only a UKI "
                            "started by the firmware is modelled among systemd's loaders")
    uki = Uki(loader.data, REMOVABLE_LOADER)
    problem = uki.unmodelled() or next(
        (f"{path} exists on the ESP: systemd-stub would load what it holds (addons, "
         "credentials, system extensions), which is not modelled"
         for path in STUB_SIDECARS if inspection.esp.exists(path)), None)
    if problem:
        raise Unpredictable(problem)
    add, stub = prediction.add, uki.stub
    stub_td = prediction.measured_by(stub, ["rtmr 2"])
    for measured in uki.stub_events():
        add(measured.pcr, ev.EV_IPL, measured.description, measured.data, in_td=stub_td,
            by=f"{stub.label} (stub.c measure_sections)")
    add(4, ev.EV_EFI_BOOT_SERVICES_APPLICATION,
        f"{REMOVABLE_LOADER}:.linux (Authenticode; LoadImage by systemd-stub)", b"",
        digest=uki.kernel.authenticode_sha384,
        by=f"{FIRMWARE} DxeTpm2MeasureBootLib, for {stub.label} linux.c load_image")
    linux = uki.linux
    if linux.in_td is None:  # nothing known about this kernel's measurements, not even the TPM's
        prediction.unpredicted["pcr 9"] = linux.why
    kernel_td = prediction.measured_by(linux, ["rtmr 2"])
    for measured in uki.kernel_events():
        add(measured.pcr, ev.EV_EVENT_TAG, measured.description, measured.data, in_td=kernel_td,
            by=f"{linux.label} EFI stub (libstub efi_measure_tagged_event)")
    prediction.notes.append(
        f"UKI: {stub.label} measures its sections into PCR 11 (RTMR2 in a TD: {stub.why}); "
        f"the command line is its .cmdline section (PCR 11); PCR 12 stays empty as the firmware "
        f"passes no load options; {linux.label}: {linux.why}. Assumes Secure Boot off (the "
        "reference VM's and TDVF's variable store): with it on, systemd-stub's security override "
        "skips the firmware's PCR 4 / RTMR1 measurement of .linux")
    return uki


def _pcr_phases(prediction: Prediction, inspection: Inspection, uki: Uki) -> None:
    """systemd-pcrextend's phase words in PCR 11 up to 'ready' (uki.py ROOT_PHASES): the value
    the self-check reads (it runs after systemd-pcrphase.service). TPM only, not in the TD."""
    try:
        initrd = set(initrd_members(uki.loaded_section(".initrd") or b""))
        root = inspection.root
    except (InitrdError, Unavailable, FilesystemError) as error:
        prediction.unpredicted["pcr 11"] = f"which systemd-pcrphase units run is unknown: {error}"
        return
    words: list[str] = []
    if measures_phases(initrd.__contains__):
        words += [word for unit, phase in INITRD_PHASES if f"{SYSTEMD_UNITS}/{unit}" in initrd
                  for word in phase]
    if measures_phases(lambda path: root.lookup(f"/{path}") is not None):
        words += [word for unit, phase in ROOT_PHASES if root.lookup(f"/{SYSTEMD_UNITS}/{unit}")
                  for word in phase]
    for word in words:
        prediction.add(11, ev.EV_IPL, word, word.encode(), in_td=False, after_boot=True,
                       by="systemd-pcrextend 257 (units/systemd-pcrphase*.service.in), TPM only")
    prediction.notes.append(
        "PCR 11 is predicted as the running system reads it after systemd-pcrphase.service: the "
        "UKI's sections" + (f", then the phase words {', '.join(words)} (systemd-pcrextend, TPM "
                            "only)" if words else "; no phase words: systemd-pcrextend finds no "
                            "TSS2 libraries (libtss2-esys/-rc/-mu) or no pcrphase unit is wanted"))


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
    for measured_by in ("shim's verification hook", f"{FIRMWARE} LoadImage"):
        prediction.add(4, ev.EV_EFI_BOOT_SERVICES_APPLICATION,
                       f"{path} (Authenticode, Secure Boot)", b"", digest=kernel,
                       by=f"{measured_by}, for Debian grub's linuxefi")


def load_measurements(path: Path, read=lambda document: document) -> dict:
    """A measurements file (``measure --json``, measurements.json) as ``read`` takes it apart;
    InputError when it is not one (``read`` raises KeyError, ValueError or TypeError)."""
    text = read_text(path, "--measurements", MEASUREMENTS_MAX_BYTES)
    try:
        return read(parse_json(text))
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
