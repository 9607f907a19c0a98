"""The measurement algorithm on synthetic inputs: register arithmetic, the TCG log reader, the
PCR -> RTMR view, and the grub script interpreter (what grub measures, in which order).

Expected strings follow the real Debian 12 boot's event log (see imagebuilder/measure/grubscript.py):
``[ "${x}" ]`` with x unset is measured as ``[  ]``, ``!`` stays in the line, a menuentry carries
its body verbatim.
"""

import hashlib
import os
import json
import shutil
import struct
from pathlib import Path

import pytest

from imagebuilder.vm import boot
from imagebuilder.core.errors import CheckFailed, HostError, InputError
from imagebuilder.vm.launch import Launch
from imagebuilder.measure import eventlog as ev
from imagebuilder.measure.efi import EFI_CERT_X509_GUID, SHIM_LOCK_GUID, signature_list
from imagebuilder.measure.grubscript import GrubSyntaxError, Grub, Unpredictable, loader_cmdline
from imagebuilder.measure.predict import Prediction, Step
from imagebuilder.measure.replay import read_event_log
from imagebuilder.verify.checks import Expected, verify
from tests.conftest import FakeHost, error_line, run_cli, schema_errors


def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def test_replay_is_the_sha384_hash_chain_from_zeros():
    first, second = sha384(b"a"), sha384(b"b")
    expected = sha384(sha384(bytes(48) + first) + second)
    assert ev.replay([first, second]) == expected
    assert ev.replay([]) == bytes(48)


@pytest.mark.parametrize("pcr, rtmr", [(0, None), (1, 0), (7, 0), (2, 1), (4, 1), (5, 1), (6, 1),
                                       (8, 2), (9, 2), (14, 2), (15, 2), (16, None)])
def test_tdvf_maps_pcrs_to_rtmrs(pcr, rtmr):
    assert ev.rtmr_of_pcr(pcr) == rtmr


def synthetic_log(events: list[tuple[int, int, bytes]]) -> bytes:
    """A crypto-agile log: the SHA-1-format Spec ID event, then SHA-256 + SHA-384 digests."""
    spec = (b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 2)
            + struct.pack("<HHHH", ev.TPM_ALG_SHA256, 32, ev.TPM_ALG_SHA384, 48) + b"\0")
    log = struct.pack("<II20sI", 0, ev.EV_NO_ACTION, bytes(20), len(spec)) + spec
    for pcr, event_type, data in events:
        log += struct.pack("<III", pcr, event_type, 2)
        log += struct.pack("<H", ev.TPM_ALG_SHA256) + hashlib.sha256(data).digest()
        log += struct.pack("<H", ev.TPM_ALG_SHA384) + sha384(data)
        log += struct.pack("<I", len(data)) + data
    return log + bytes(64)  # the zero-filled rest of the log area


def test_tcg2_log_is_read_event_by_event():
    log = synthetic_log([(4, ev.EV_SEPARATOR, b"\0\0\0\0"), (8, ev.EV_IPL, b"grub_cmd: x\0")])

    events = ev.parse_tcg2_log(log)

    assert [(e.pcr, e.event_type, e.data) for e in events] == [
        (4, ev.EV_SEPARATOR, b"\0\0\0\0"), (8, ev.EV_IPL, b"grub_cmd: x\0")]
    assert events[0].sha384 == sha384(b"\0\0\0\0")
    assert events[1].digests[ev.TPM_ALG_SHA256] == hashlib.sha256(b"grub_cmd: x\0").digest()


@pytest.mark.parametrize("log", [b"", b"\0" * 64, synthetic_log([])[:40] + b"x" * 40])
def test_not_a_tcg2_log_is_an_error(log):
    with pytest.raises(ev.EventLogError):
        ev.parse_tcg2_log(log)


def step(pcr, event_type, data, in_td=True) -> Step:
    return Step(ev.Event(pcr, event_type, data.decode(errors="replace"), sha384(data)), in_td)


def test_td_view_has_one_rtmr1_separator_and_only_events_of_cc_aware_loaders():
    action = step(4, ev.EV_EFI_ACTION, b"Calling EFI Application from Boot Option")
    separators = [step(4, ev.EV_SEPARATOR, b"\0\0\0\0"), step(5, ev.EV_SEPARATOR, b"\0\0\0\0")]
    gpt = step(5, ev.EV_EFI_GPT_EVENT, b"gpt")
    mok = step(14, ev.EV_IPL, b"moklist")
    grub_cmd = step(8, ev.EV_IPL, b"set x=1", in_td=False)
    prediction = Prediction("img", [action, *separators, gpt, mok, grub_cmd])

    digests = lambda steps: [s.event.digest for s in steps]  # noqa: E731
    assert prediction.pcr(4) == ev.replay(digests([action, separators[0]])).hex()
    assert prediction.pcr(5) == ev.replay(digests([separators[1], gpt])).hex()
    assert prediction.pcr(8) == ev.replay(digests([grub_cmd])).hex()
    # TDVF: one separator, PCR 4 and 5 events interleaved in boot order.
    assert prediction.rtmr(1) == ev.replay(digests([action, separators[0], gpt])).hex()
    assert prediction.rtmr(2) == ev.replay(digests([mok])).hex()  # grub's command is not there


def test_unpredicted_registers_have_no_value_and_go_tdx_guest_leaves_them_unchecked():
    prediction = Prediction("img", [step(4, ev.EV_SEPARATOR, b"\0\0\0\0")],
                            unpredicted={"pcr 8": "why", "rtmr 2": "why"})

    assert prediction.pcr(8) is None and prediction.rtmr(2) is None
    values = prediction.go_tdx_guest_flags().removeprefix("-rtmrs ").split(",")
    assert values[0] == values[2] == values[3] == ""
    assert len(values[1]) == 96 and values[1] == prediction.rtmr(1)
    document = prediction.to_dict()
    assert set(document["pcr_sha384"]) == {"4", "5", "8", "9", "11", "12", "14"}
    assert set(document["rtmr"]) == {"1", "2"} and document["rtmr"]["2"] is None
    assert schema_errors("measurements", json.loads(json.dumps(document))) == []
    assert schema_errors("measurements", {**document, "rtmr": {"1": "00"}})


def test_signature_list_is_shims_single_entry_layout():
    cert = b"\x30\x82\x01\x00" + bytes(256)
    esl = signature_list(EFI_CERT_X509_GUID, cert)
    list_size, header_size, signature_size = struct.unpack_from("<III", esl, 16)
    assert esl[:16] == EFI_CERT_X509_GUID and esl[28:44] == SHIM_LOCK_GUID
    assert (list_size, header_size, signature_size) == (len(esl), 0, 16 + len(cert))
    assert esl[44:] == cert


@pytest.mark.parametrize("args, expected", [
    (["/boot/vmlinuz", "root=UUID=1", "ro"], "/boot/vmlinuz root=UUID=1 ro"),
    (["/k", "a b"], '/k "a b"'),
    (["/k", 'x="y"', "it's"], "/k x=\\\"y\\\" it\\'s"),
])
def test_kernel_command_line_is_quoted_like_grub(args, expected):
    assert loader_cmdline(args) == expected


class FakeVolume:
    def __init__(self, uuid: str, files: dict[str, bytes]):
        self.uuid, self.files = uuid, files

    def kind(self, path):
        if path in self.files:
            return "file"
        return "dir" if any(name.startswith(path.rstrip("/") + "/") for name in self.files) else None

    def read(self, path):
        return self.files.get(path)


ROOT_CONFIG = b"""\
if [ -s $prefix/grubenv ]; then
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
else
   set default="0"
fi
if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi
export menuentry_id_option
function load_video {
  insmod all_video
}
set timeout=1
menuentry 'Linux' --class os $menuentry_id_option 'linux-id' {
\tload_video
\tif [ x$grub_platform = xxen ]; then insmod xzio; fi
\tsearch --no-floppy --fs-uuid --set=root ROOT-UUID
\techo\t'Loading ...'
\tlinux\t/boot/vmlinuz root=UUID=ROOT-UUID ro  console=ttyS0 $unset_variable
\tinitrd\t/boot/initrd.img
}
"""
ESP_CONFIG = b"search --fs-uuid --set=root ROOT-UUID\nset prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n"
MEMDISK_CONFIG = b"""\
if [ -z "$prefix" -o ! -e "$prefix" ]; then
\tif ! search --file --set=root /.disk/info; then
\t\tsearch --file --set=root /.disk/mini-info
\tfi
\tset prefix=($root)/boot/grub
fi
source $cmdpath/grub.cfg
"""


def grub(root_config: bytes = ROOT_CONFIG, built_in=("all_video",)) -> Grub:
    esp = FakeVolume("1234-ABCD", {"/EFI/BOOT/grub.cfg": ESP_CONFIG})
    root = FakeVolume("ROOT-UUID", {"/boot/grub/grub.cfg": root_config, "/boot/vmlinuz": b"kernel",
                                    "/boot/initrd.img": b"initrd"})
    memdisk = FakeVolume("", {"/grub.cfg": MEMDISK_CONFIG})
    return Grub({"hd0,gpt1": esp, "hd0,gpt2": root}, boot_device="hd0,gpt1", boot_dir="/EFI/BOOT",
                prefix="/EFI/debian", memdisk=memdisk, features=["feature_menuentry_id"],
                has_module=lambda name: name in built_in)


def test_grub_boot_is_measured_like_the_real_one():
    events = grub().boot("normal (memdisk)/grub.cfg\n")

    measured = [(e.pcr, e.description) for e in events]
    body = ROOT_CONFIG.decode().split("{\n", 2)[2].rsplit("}", 1)[0]  # the menuentry's body
    assert measured == [
        (8, "grub_cmd: [ -z (hd0,gpt1)/EFI/debian -o ! -e (hd0,gpt1)/EFI/debian ]"),
        (8, "grub_cmd: ! search --file --set=root /.disk/info"),
        (8, "grub_cmd: search --file --set=root /.disk/mini-info"),
        (8, "grub_cmd: set prefix=(hd0,gpt1)/boot/grub"),
        (8, "grub_cmd: source (hd0,gpt1)/EFI/BOOT/grub.cfg"),
        (9, "(hd0,gpt1)/EFI/BOOT/grub.cfg"),
        (8, "grub_cmd: search --fs-uuid --set=root ROOT-UUID"),
        (8, "grub_cmd: set prefix=(hd0,gpt2)/boot/grub"),
        (8, "grub_cmd: configfile (hd0,gpt2)/boot/grub/grub.cfg"),
        (9, "(hd0,gpt2)/boot/grub/grub.cfg"),
        (8, "grub_cmd: [ -s (hd0,gpt2)/boot/grub/grubenv ]"),
        (8, "grub_cmd: [  ]"),
        (8, "grub_cmd: set default=0"),
        (8, "grub_cmd: [ xy = xy ]"),
        (8, "grub_cmd: menuentry_id_option=--id"),
        (8, "grub_cmd: export menuentry_id_option"),
        (8, "grub_cmd: set timeout=1"),
        (8, "grub_cmd: menuentry Linux --class os --id linux-id {\n" + body + "}"),
        (8, "grub_cmd: setparams Linux"),
        (8, "grub_cmd: load_video"),
        (8, "grub_cmd: insmod all_video"),
        (8, "grub_cmd: [ xefi = xxen ]"),
        (8, "grub_cmd: search --no-floppy --fs-uuid --set=root ROOT-UUID"),
        (8, "grub_cmd: echo Loading ..."),
        (8, "grub_cmd: linux /boot/vmlinuz root=UUID=ROOT-UUID ro console=ttyS0"),
        (9, "/boot/vmlinuz"),
        (8, "kernel_cmdline: /boot/vmlinuz root=UUID=ROOT-UUID ro console=ttyS0"),
        (8, "grub_cmd: initrd /boot/initrd.img"),
        (9, "/boot/initrd.img"),
    ]
    # grub hashes the string without its prefix, and a file's content
    assert events[6].data == b"search --fs-uuid --set=root ROOT-UUID"
    assert events[5].data == ESP_CONFIG and events[-1].data == b"initrd"


def test_configfile_keeps_only_exported_variables():
    config = ROOT_CONFIG.replace(b"set timeout=1\n", b"set timeout=0\nset kept=$cmdpath lost=$secret\n")
    interpreter = grub(config)
    interpreter.context.variables["secret"] = "x"

    events = interpreter.boot("normal (memdisk)/grub.cfg\n")

    assert "grub_cmd: set kept=(hd0,gpt1)/EFI/BOOT lost=" in [e.description for e in events]


@pytest.mark.parametrize("change, reason", [
    ((b"set timeout=1", b"set timeout=-1"), "waits for a key press"),
    ((b"set timeout=1\n", b""), "waits for a key press"),
    ((b"load_video\n", b"play 480 440 1\n\tgrub_undocumented_command\n"), "'grub_undocumented_command' is not modelled"),
    ((b"insmod all_video", b"insmod lvm"), "insmod lvm: the module is not built into grub"),
    ((b'set default="0"', b'set default="1>2"'), "default entry '1>2'"),
    ((b"export menuentry_id_option", b"for x in a b; do echo $x; done"), "'for' loop"),
    ((b"/boot/initrd.img\n", b"/boot/missing.img\n"), "fail to open /boot/missing.img"),
])
def test_what_the_interpreter_cannot_know_is_named(change, reason):
    config = ROOT_CONFIG.replace(*change)
    assert config != ROOT_CONFIG

    with pytest.raises(Unpredictable, match=reason):
        grub(config).boot("normal (memdisk)/grub.cfg\n")


def test_a_syntax_error_is_unpredictable_with_its_line():
    with pytest.raises(GrubSyntaxError, match=r"grub.cfg line 4: missing elif or else or fi"):
        grub(b"set timeout=0\nif true; then\n  echo x\n").boot("normal (memdisk)/grub.cfg\n")


def test_without_embedded_config_grub_reads_prefix_grub_cfg():
    interpreter = grub()
    interpreter.volumes["hd0,gpt1"].files["/EFI/debian/grub.cfg"] = ESP_CONFIG

    events = interpreter.boot("")

    assert events[0].description == "(hd0,gpt1)/EFI/debian/grub.cfg"
    assert events[-1].description == "/boot/initrd.img"


def test_a_real_log_is_compared_event_by_event():
    prediction = Prediction("img", [step(4, ev.EV_SEPARATOR, b"\0\0\0\0"),
                                    step(8, ev.EV_IPL, b"set a=1"), step(8, ev.EV_IPL, b"set b=2")])
    expected = Expected.from_measurements(prediction.to_dict(), "img")

    def problems(events):
        return verify(read_event_log(synthetic_log(events)), expected=expected).problems()

    assert problems([(4, ev.EV_SEPARATOR, b"\0\0\0\0"), (8, ev.EV_IPL, b"set a=1"),
                     (8, ev.EV_IPL, b"set b=2"), (7, ev.EV_SEPARATOR, b"\0\0\0\0")]) == []
    assert problems([(4, ev.EV_SEPARATOR, b"\0\0\0\0"), (8, ev.EV_IPL, b"set a=1"),
                     (8, ev.EV_IPL, b"set b=3")]) == [
        "PCR 8 event 2: expected 'set b=2', the log has EV_IPL 'set b=3'"]
    assert problems([(4, ev.EV_SEPARATOR, b"\0\0\0\0"), (8, ev.EV_IPL, b"set a=1")]) == [
        "PCR 8 event 2: expected 'set b=2', the log has nothing more"]


def test_reference_vm_has_a_tpm_and_no_nic():
    args = Launch(disk=Path("/img/vm.qcow2"), accel="tcg", tpm_socket=Path("/run/swtpm.sock")).qemu_args()

    assert "socket,id=chrtpm,path=/run/swtpm.sock" in args
    assert args[args.index("-tpmdev") + 1] == "emulator,id=tpm0,chardev=chrtpm"
    assert args[args.index("-device") + 1] == "tpm-tis,tpmdev=tpm0"
    assert not any("virtio-net" in arg or arg == "-netdev" for arg in args)
    assert "file=/img/vm.qcow2,if=virtio,format=qcow2" in args


PCR = "a" * 96


def test_guest_registers_must_equal_the_prediction_and_each_difference_is_named():
    assert boot.compare_measurements({"4": PCR}, {"4": PCR, "7": "b" * 96}, "PCR") == {
        "4": {"predicted": PCR, "guest": PCR}}

    with pytest.raises(CheckFailed) as raised:
        boot.compare_measurements({"4": PCR, "8": PCR, "9": PCR, "14": None},
                                  {"4": PCR, "8": "b" * 96, "14": PCR}, "PCR")
    message = str(raised.value)
    assert "PCR 8 (guest bbbbbbbbbbbb…, predicted aaaaaaaaaaaa…)" in message
    assert "PCR 9 (not reported by the guest)" in message and "PCR 14 (unpredicted)" in message
    assert "PCR 4" not in message


def test_differing_registers_name_where_the_guests_event_log_parts():
    with pytest.raises(CheckFailed) as raised:
        boot.compare_measurements({"9": PCR}, {"9": "b" * 96}, "PCR",
                                  ("PCR 9 event 2: predicted 'Linux initrd', the log has nothing more",))
    assert "its event log: PCR 9 event 2: predicted 'Linux initrd'" in str(raised.value)


@pytest.mark.skipif(not shutil.which("swtpm"), reason="swtpm is not installed (setup.sh installs it)")
def test_software_tpm_starts_and_is_gone_afterwards(tmp_path):
    with boot.software_tpm(tmp_path) as socket:
        assert socket.is_socket()
        pids = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
                if str(tmp_path).encode() in p.read_bytes()]
        assert pids
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_tpm_boot_refuses_a_td_and_needs_swtpm(tmp_path, monkeypatch):
    image = tmp_path / "image.qcow2"
    image.write_bytes(b"")
    with pytest.raises(InputError, match="--tpm and --tdx"):
        boot.boot_image(image, tpm=True, tdx=True, console_log=tmp_path / "console.log")
    with pytest.raises(HostError, match="swtpm is not installed"):
        boot.boot_image(image, tpm=True, console_log=tmp_path / "console.log",
                        host=FakeHost(missing={"swtpm"}))


def measurements_file(path: Path) -> Path:
    path.write_text(json.dumps({"rtmr": {"1": "a" * 96, "2": "b" * 96},
                                "pcr_sha384": {str(i): "c" * 96 for i in (4, 5, 8, 9, 11, 12, 14)}}))
    return path


def test_validate_measurements_on_an_image_without_a_boot_path_reports_the_check(tmp_path):
    """An MBR disk, no GPT: the measurements check is skipped (which fails the verdict) like the
    other checks that need a GPT, in a complete report, rather than ending validation with an
    input error naming the measurements file."""
    image = tmp_path / "mbr.raw"
    disk = bytearray(4 << 20)
    disk[510:512] = b"\x55\xaa"
    image.write_bytes(disk)
    result = run_cli("validate", image, "--measurements", measurements_file(tmp_path / "m.json"),
                     "--json")
    assert result.returncode == 1, result.stderr
    checks = {check["id"]: check for check in json.loads(result.stdout)["checks"]}
    assert checks["measurements.match"]["status"] == "skip"
    assert checks["measurements.match"]["evidence"] == "not checked: no intact GPT"


def test_a_measurements_file_that_is_not_a_file_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "m.json"
    os.mkfifo(fifo)
    image = tmp_path / "blank.raw"
    image.write_bytes(bytes(4 << 20))
    result = run_cli("validate", image, "--measurements", fifo, timeout=30)
    assert result.returncode == 2
    assert error_line(result).startswith(f"error: --measurements {fifo}")
