"""The verifier's readers and checks: TD event logs (CCEL) and quotes, replay, log <-> quote and
log <-> image comparison, reference value shapes, TDVF metadata and MRTD.

Real public vectors: google/go-tdx-guest's CCEL and TD quote v4 of one boot, read in place from
``../shared/data/attestation/`` (the tests skip, saying so, where that directory is absent).
Everything else is generated here: CCELs with random events, EV_NO_ACTION records and the
0xFF-filled tail of a log area; v5 quotes made from the v4 quote's body.
"""

import base64
import hashlib
import json
import random
import struct
from pathlib import Path

import pytest

from imagebuilder.measure import eventlog as ev
from imagebuilder.measure import reference, tdvf
from imagebuilder.measure.replay import CCEL, TPM, differences, read_event_log
from imagebuilder.verify.checks import Expected, verify
from imagebuilder.verify.quote import QuoteError, parse_quote
from tests.conftest import error_line, run_cli
from tests.test_measure import synthetic_log

ATTESTATION = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "attestation"
CCEL_DATA = ATTESTATION / "go-tdx-guest-ccel_data.dat"
CCEL_TABLE = ATTESTATION / "go-tdx-guest-ccel_table.dat"
QUOTE_V4 = ATTESTATION / "go-tdx-guest-cos-113-tdx-quote.dat"
NONCE = ATTESTATION / "go-tdx-guest-nonce.dat"
HOST_OVMF = Path("/usr/share/ovmf/OVMF.fd")


def public(path: Path) -> bytes:
    if not path.is_file():
        pytest.skip(f"public test vector {path} is absent (shared/data/attestation beside the repo)")
    return path.read_bytes()


def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def ccel(events: list[tuple[int, int, bytes]], digests: dict[int, bytes] | None = None,
         tail: int = 4096) -> bytes:
    """A CC event log area as TDVF writes it: the SHA-1-format Spec ID event (SHA-384 only),
    then (MR index, type, data) records whose digest is the data's SHA-384 unless ``digests``
    gives another for that position, then ``tail`` bytes of 0xFF."""
    spec = (b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1)
            + struct.pack("<HH", ev.TPM_ALG_SHA384, 48) + b"\0")
    log = struct.pack("<II20sI", 0, ev.EV_NO_ACTION, bytes(20), len(spec)) + spec
    for position, (index, event_type, data) in enumerate(events):
        digest = (digests or {}).get(position, sha384(data))
        log += struct.pack("<IIIH", index, event_type, 1, ev.TPM_ALG_SHA384) + digest
        log += struct.pack("<I", len(data)) + data
    return log + b"\xff" * tail


def random_events(seed: int, count: int = 40) -> list[tuple[int, int, bytes]]:
    rng = random.Random(seed)
    events = []
    for _ in range(count):
        if rng.random() < 0.15:  # informational: extends nothing
            events.append((rng.randint(0, 4), ev.EV_NO_ACTION, rng.randbytes(rng.randint(0, 64))))
        else:
            events.append((rng.randint(1, 4), ev.EV_IPL, rng.randbytes(rng.randint(0, 300))))
    return events


@pytest.mark.parametrize("seed", range(5))
def test_a_generated_ccel_replays_to_the_hash_chain_of_its_events(seed):
    events = random_events(seed)

    log = read_event_log(ccel(events))

    assert log.kind == CCEL
    for rtmr in range(4):
        register = bytes(48)
        for index, event_type, data in events:
            if index == rtmr + 1 and event_type != ev.EV_NO_ACTION:
                register = sha384(register + sha384(data))
        assert log.replayed()[f"rtmr{rtmr}"] == register.hex()
    assert len(log.measured) == sum(event_type != ev.EV_NO_ACTION for _, event_type, _ in events)


def test_the_public_ccel_replays_to_its_quotes_rtmrs():
    log = read_event_log(public(CCEL_DATA))
    quote = parse_quote(public(QUOTE_V4))

    assert log.kind == CCEL
    assert [log.replayed()[f"rtmr{i}"] for i in range(4)] == [r.hex() for r in quote.rtmrs]
    assert quote.rtmrs[3] == bytes(48)  # nothing extended RTMR3 in that boot
    verdict = verify(log, quote)
    assert verdict.log_matches_quote is True and verdict.ok and not verdict.inconsistent_events


def test_the_public_quote_v4_fields():
    quote = parse_quote(public(QUOTE_V4))

    assert (quote.version, quote.body_type) == (4, "TDX 1.0")
    assert quote.fields["mrtd"].hex().startswith("dae67181d3d65e07")
    assert quote.fields["reportdata"] == public(NONCE)
    assert quote.fields["xfam"].hex() == "e700060000000000"
    assert quote.td_attributes == {"debug": False, "sept_ve_disable": True, "pks": False,
                                   "kl": False, "perfmon": False}
    assert quote.qe_vendor_id.hex() == "939a7233f79c4ca9940a0db3957f0607"  # Intel's QE
    assert quote.to_dict()["signature_checked"] is False


def quote_v5(v4: bytes, body_type: int) -> bytes:
    """The v4 quote's content in the v5 layout: header, body descriptor, body, signed data."""
    body, rest = v4[48:632], v4[632:]
    if body_type == 3:  # TDX 1.5: TEE_TCB_SVN2 and MRSERVICETD follow the 1.0 body
        body += b"\x02" * 16 + b"\x5e" * 48
    return struct.pack("<H", 5) + v4[2:48] + struct.pack("<HI", body_type, len(body)) + body + rest


@pytest.mark.parametrize("body_type, name", [(2, "TDX 1.0"), (3, "TDX 1.5")])
def test_a_quote_v5_reads_as_its_v4_content(body_type, name):
    v4 = parse_quote(public(QUOTE_V4))

    v5 = parse_quote(quote_v5(public(QUOTE_V4), body_type))

    assert (v5.version, v5.body_type) == (5, name)
    assert {key: v5.fields[key] for key in v4.fields} == v4.fields
    if body_type == 3:
        assert v5.fields["mrservicetd"] == b"\x5e" * 48


@pytest.mark.parametrize("change, message", [
    (lambda q: q[:40], "too short"),
    (lambda q: q[:600], "cut off"),
    (lambda q: q[:700], "cut off: the signed data"),
    (lambda q: struct.pack("<H", 3) + q[2:], "version 3"),
    (lambda q: q[:4] + struct.pack("<I", 0) + q[8:], r"not a TDX quote \(0x81\) but an SGX"),
    (lambda q: q[:2] + struct.pack("<H", 3) + q[4:], "attestation key type 3"),
    (lambda q: quote_v5(q, 2)[:48] + struct.pack("<HI", 2, 600) + q[48:], "v5 body type 2 of 600"),
])
def test_a_foreign_or_cut_quote_is_named(change, message):
    with pytest.raises(QuoteError, match=message):
        parse_quote(change(public(QUOTE_V4)))


def test_a_changed_digest_fails_the_quote_and_is_named_where_the_event_describes_itself():
    events = [(2, ev.EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
              (2, ev.EV_SEPARATOR, b"\0\0\0\0"), (3, ev.EV_IPL, b"grub_cmd: linux /vmlinuz\0"),
              (3, ev.EV_IPL, b"/boot/vmlinuz\0")]
    grub_style = {2: sha384(b"linux /vmlinuz"), 3: sha384(b"the kernel file")}
    honest = read_event_log(ccel(events, grub_style))
    replayed = honest.replayed()
    quote = parse_quote(public(QUOTE_V4))
    quote.fields.update({f"rtmr{i}": bytes.fromhex(replayed[f"rtmr{i}"]) for i in range(4)})
    assert verify(honest, quote).ok

    def changed(position: int):
        return verify(read_event_log(ccel(events, {**grub_style, position: sha384(b"other")})), quote)

    separator, command, file = changed(1), changed(2), changed(3)

    assert separator.quote_mismatch == ["RTMR1"] and not separator.ok
    assert separator.inconsistent_events == [
        "2 of RTMR1 (EV_SEPARATOR '4 bytes') has a digest that its data does not give: the log "
        "was altered"]
    assert command.quote_mismatch == ["RTMR2"]
    assert command.inconsistent_events[0].startswith("1 of RTMR2 (EV_IPL 'grub_cmd: linux /vmlinuz')")
    # a file's digest is of the file, not of its logged name: only the quote tells
    assert file.quote_mismatch == ["RTMR2"] and file.inconsistent_events == []


def measurements_document(events: list[tuple[int, int, bytes]]) -> dict:
    """A measurements record (measure --json) expecting these (MR index, type, data) events."""
    entries = [{"pcr": 4 if index == 2 else 8, "type": ev.event_type_name(event_type),
                "description": data.decode(errors="replace"), "sha384": sha384(data).hex(),
                "rtmr": index - 1} for index, event_type, data in events]
    return {"rtmr": {"1": None, "2": None}, "pcr_sha384": {"4": None},
            "rtmr_events": entries, "events": [{**e, "in_td": True} for e in entries],
            "unpredicted": {}}


def test_the_first_event_that_differs_from_the_image_is_named_with_both_sides():
    # EV_IPL without grub's prefixes: events whose digests their data does not prescribe
    expected = [(2, ev.EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
                (3, ev.EV_IPL, b"linux /vmlinuz ro"), (3, ev.EV_IPL, b"boot")]
    booted = expected[:1] + [(3, ev.EV_IPL, b"linux /vmlinuz ro quiet")] + expected[2:]
    image = Expected.from_measurements(measurements_document(expected), "image.qcow2")

    same = verify(read_event_log(ccel(expected)), expected=image)
    other = verify(read_event_log(ccel(booted)), expected=image)

    assert same.log_matches_image is True and same.ok
    assert other.log_matches_image is False and not other.ok
    first = other.to_dict()["first_difference"]
    assert (first["register"], first["event"]) == ("RTMR2", 1)
    assert first["expected"]["description"] == "linux /vmlinuz ro"
    assert "linux /vmlinuz ro quiet" in first["log"]["data"]
    assert "RTMR2 event 1: expected 'linux /vmlinuz ro'" in other.problems()[0]


def test_a_log_that_ends_early_or_runs_on_is_a_difference():
    expected = [(3, ev.EV_IPL, b"a"), (3, ev.EV_IPL, b"b")]
    log = read_event_log(ccel(expected[:1]))
    image = Expected.from_measurements(measurements_document(expected), "image")

    (difference,) = differences(image.rtmr_events, log, ["RTMR2"])

    assert difference.number == 2 and difference.logged is None
    assert "the log has nothing more" in str(difference)


def test_an_unpredicted_register_cannot_pass_the_image_check():
    events = [(3, ev.EV_IPL, b"a")]
    document = {**measurements_document(events), "unpredicted": {"rtmr 2": "menu waits"}}

    verdict = verify(read_event_log(ccel(events)), expected=Expected.from_measurements(document, "x"))

    assert verdict.log_matches_image is False and verdict.unchecked_registers == ["RTMR2"]
    assert verdict.image_differences == []


def test_a_tpm_log_is_told_from_a_ccel_by_its_pcrs():
    log = read_event_log(synthetic_log([(0, ev.EV_S_CRTM_VERSION, b"v"), (4, ev.EV_SEPARATOR, b"\0" * 4)]))

    assert log.kind == TPM
    assert set(log.replayed()) == {"pcr0", "pcr4"}
    assert [register for register, _ in log.measured] == ["PCR 0", "PCR 4"]


@pytest.mark.parametrize("data, message", [
    (b"CCEL8\0\0\0" + bytes(48), "the ACPI CCEL table"),
    (b"\x7fELF" + bytes(100), "Spec ID"),
    (ccel([(3, ev.EV_IPL, b"x" * 100)], tail=0)[:-20], "cut off"),
])
def test_a_foreign_or_truncated_log_is_an_error(data, message):
    with pytest.raises(ev.EventLogError, match=message):
        read_event_log(data)


def test_the_public_ccel_table_is_refused_as_a_log():
    with pytest.raises(ev.EventLogError, match="ACPI CCEL table"):
        read_event_log(public(CCEL_TABLE))


def test_reference_shapes_fill_what_is_known_and_name_the_rest():
    r1, r2 = "a" * 96, "b" * 96

    values = reference.reference_values({"rtmr1": r1, "rtmr2": r2})

    assert set(values["unknown"]) == {"mrtd", "rtmr0", "rtmr3"}
    assert values["go-tdx-guest"] == f"-rtmrs ,{r1},{r2},"
    assert values["dstack"] == {"0": None, "1": None, "2": r1, "3": r2, "4": None}
    message = values["rvps"]
    assert (message["version"], message["type"]) == ("0.1.0", "sample")
    assert json.loads(base64.b64decode(message["payload"])) == {"rtmr_1": [r1], "rtmr_2": [r2]}
    assert f'input.tdx_rtmr1 == "{r1}"' in values["ita"] and "tdx_mrtd" not in values["ita"]
    with_mrtd = reference.reference_values({"mrtd": "c" * 96, "rtmr1": r1, "rtmr2": r2})
    assert with_mrtd["go-tdx-guest"].startswith(f"-mr_td {'c' * 96} -rtmrs ")
    assert "mrtd" not in with_mrtd["unknown"]


def tdvf_image(sections: list[tuple[bytes, int, int, int, int]]) -> bytes:
    """A minimal TDVF: section payloads, the TDVF descriptor, and the GUID table at the end.
    ``sections``: (raw data, GPA, memory size, type, attributes)."""
    payload, records = b"", b""
    for data, address, size, kind, attributes in sections:
        records += tdvf.SECTION.pack(len(payload) if data else 0, len(data), address, size, kind,
                                     attributes)
        payload += data
    descriptor = tdvf.DESCRIPTOR.pack(b"TDVF", 16 + len(records), 1, len(sections)) + records
    image = payload + descriptor
    metadata_entry = struct.pack("<I", 0)  # patched below: distance from the end
    entry = metadata_entry + struct.pack("<H", 22) + tdvf.TDX_METADATA_OFFSET_GUID
    table = entry + struct.pack("<H", len(entry) + 18) + tdvf.TABLE_FOOTER_GUID
    image += table + bytes(tdvf.BYTES_AFTER_TABLE_FOOTER)
    distance = len(image) - len(payload)
    at = len(payload) + len(descriptor)
    return image[:at] + struct.pack("<I", distance) + image[at + 4:]


def test_mrtd_of_a_one_page_tdvf_follows_the_tdx_module_records():
    page = bytes(range(256)) * 16
    image = tdvf_image([(page, 0xFFFFF000, 0x1000, 0, tdvf.ATTRIBUTE_MR_EXTEND),
                        (b"", 0x800000, 0x2000, 2, 0), (b"", 0x900000, 0x1000, 3, tdvf.ATTRIBUTE_PAGE_AUG)])
    # Written out from the TDX module ABI: 128-byte records, the GPA at byte 16.
    expected = hashlib.sha384(b"MEM.PAGE.ADD" + bytes(4) + (0xFFFFF000).to_bytes(8, "little") + bytes(104))
    for chunk in range(16):
        expected.update(b"MR.EXTEND" + bytes(7) + (0xFFFFF000 + 256 * chunk).to_bytes(8, "little")
                        + bytes(104) + page[256 * chunk : 256 * chunk + 256])
    for gpa in (0x800000, 0x801000):  # the TD HOB pages are added, not extended; PAGE.AUG neither
        expected.update(b"MEM.PAGE.ADD" + bytes(4) + gpa.to_bytes(8, "little") + bytes(104))

    assert tdvf.mrtd(image, tdvf.SINGLE_PASS) == expected.digest()
    assert [s.name for s in tdvf.sections(image)] == ["BFV", "TD_HOB", "TEMP_MEM"]


def test_the_two_qemu_orders_differ_once_a_section_has_two_pages():
    image = tdvf_image([(bytes(0x2000), 0xFFFFE000, 0x2000, 0, tdvf.ATTRIBUTE_MR_EXTEND)])

    assert tdvf.mrtd(image, tdvf.SINGLE_PASS) != tdvf.mrtd(image, tdvf.TWO_PASS)


def test_the_hosts_ovmf_carries_tdvf_metadata():
    if not HOST_OVMF.is_file():
        pytest.skip(f"{HOST_OVMF} is absent (Debian's ovmf package)")
    report = tdvf.measure_firmware(HOST_OVMF.read_bytes())

    kinds = [section["type"] for section in report["sections"]]
    assert kinds[:2] == ["BFV", "CFV"] and "TD_HOB" in kinds
    bfv = report["sections"][0]
    assert bfv["mr_extend"] and int(bfv["address"], 16) + bfv["memory_size"] == 1 << 32
    assert report["mrtd"]["single-pass"]["value"] != report["mrtd"]["two-pass"]["value"]
    unknown = [event for event in report["rtmr0_events"] if event["sha384"] is None]
    assert any("ACPI" in event["description"] for event in unknown) and report["rtmr0"] is None


def test_uefi_variable_encoding_equals_the_public_logs_secure_boot_events():
    """The event data of go-tdx-guest's SecureBoot..dbx events re-encoded from their parts."""
    log = read_event_log(public(CCEL_DATA))
    variables = [event for _, event in log.measured
                 if event.event_type == ev.EV_EFI_VARIABLE_DRIVER_CONFIG]
    assert len(variables) == 5
    for event, (vendor, name) in zip(variables, tdvf.SECURE_BOOT_VARIABLES):
        (name_length, data_length) = struct.unpack_from("<QQ", event.data, 16)
        value = event.data[32 + 2 * name_length : 32 + 2 * name_length + data_length]
        assert tdvf.uefi_variable_data(vendor, name, value) == event.data
        assert sha384(event.data) == event.sha384


@pytest.mark.parametrize("firmware, message", [
    (b"\0" * 4096, "no OVMF GUID table"),
    (tdvf_image([])[:-60] + bytes(60), "no OVMF GUID table"),
])
def test_a_firmware_without_tdvf_metadata_is_named(firmware, message):
    with pytest.raises(tdvf.TdvfError, match=message):
        tdvf.sections(firmware)


def test_verify_says_the_public_log_matches_its_quote(tmp_path):
    public(CCEL_DATA)
    result = run_cli("verify", "--log", CCEL_DATA, "--quote", QUOTE_V4, "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["log_matches_quote"] is True and document["ok"] is True
    assert all(document["replayed"][f"rtmr{i}"] == document["quote"][f"rtmr{i}"] for i in range(4))
    assert document["log_matches_image"] is None and document["first_difference"] is None
    assert "go-tdx-guest" in document["not_checked"]


def test_verify_fails_a_log_with_one_digest_changed_and_names_the_event(tmp_path):
    log = bytearray(public(CCEL_DATA))
    at = log.find(b"grub_cmd: set timeout=0") - 4 - 48  # the event's SHA-384, before its data size
    log[at] ^= 0xFF
    (tmp_path / "ccel.dat").write_bytes(log)

    result = run_cli("verify", "--log", tmp_path / "ccel.dat", "--quote", QUOTE_V4, "--json")

    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["log_matches_quote"] is False and document["quote_mismatch"] == ["RTMR2"]
    assert "EV_IPL 'grub_cmd: set timeout=0'" in document["inconsistent_events"][0]
    assert "grub_cmd: set timeout=0" in error_line(result)


def test_measure_firmware_reports_mrtd_of_the_hosts_tdvf():
    if not HOST_OVMF.is_file():
        pytest.skip(f"{HOST_OVMF} is absent (Debian's ovmf package)")
    result = run_cli("measure", "--firmware", HOST_OVMF, "--json")

    assert result.returncode == 0, result.stderr
    firmware = json.loads(result.stdout)["firmware"]
    assert firmware["mrtd"]["single-pass"]["value"] == tdvf.mrtd(HOST_OVMF.read_bytes()).hex()
    assert "unverified" in firmware["status"] and firmware["rtmr0"] is None


def test_verify_against_a_measurements_file(tmp_path):
    events = [(2, ev.EV_EFI_ACTION, b"Calling EFI Application from Boot Option"), (3, ev.EV_IPL, b"k")]
    (tmp_path / "ccel.dat").write_bytes(ccel(events))
    document = measurements_document(events)
    (tmp_path / "m.json").write_text(json.dumps(document))
    (tmp_path / "sb.json").write_text(json.dumps({**document, "secure_boot": True}))

    same = run_cli("verify", "--log", tmp_path / "ccel.dat", "--measurements", tmp_path / "m.json", "--json")
    other_vm = run_cli("verify", "--log", tmp_path / "ccel.dat", "--measurements", tmp_path / "sb.json")

    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["log_matches_image"] is True
    assert other_vm.returncode == 2
    assert "Secure Boot on, the log's firmware had it off" in error_line(other_vm)
