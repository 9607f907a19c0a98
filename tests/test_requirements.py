"""The host requirements are one list: the verbs and doctor ask it and say the same thing."""

import io
from pathlib import Path

import pytest
from rich.console import Console

from imagebuilder.build import pipeline
from imagebuilder.build.pipeline import BuildRequest
from imagebuilder.distros.targets import get_target
from imagebuilder.host import requirements, runner
from imagebuilder.commands import doctor
from imagebuilder.core.errors import HostError
from imagebuilder.core.results import FAIL, PASS, SKIP, WARN, Result, render
from tests.conftest import FakeHost


def doctor_row(name: str, host: FakeHost) -> Result:
    """The requirement's row in doctor's table (evaluating only its section)."""
    [needed_for] = [r.needed_for for r in requirements.REQUIREMENTS if r.id == name]
    [section] = [s for s, purposes in doctor.SECTIONS.items() if set(needed_for) & set(purposes)]
    return next(check for check in doctor.host_checks(section, Path("."), host) if check.id == name)


@pytest.mark.parametrize("name, host", [
    ("root", FakeHost(is_root=False)),
    ("host tools", FakeHost(missing={"sgdisk"})),
    ("kiwi", FakeHost(kiwi_version="9.24.48")),
    ("loop devices", FakeHost(devices=())),
    ("UEFI firmware", FakeHost(ovmf=None)),
    ("swtpm", FakeHost(missing={"swtpm"})),
])
def test_a_verb_refuses_with_the_words_and_hint_doctor_shows(name, host):
    row = doctor_row(name, host)
    with pytest.raises(HostError) as raised:
        requirements.require(name, context=requirements.Context(host))
    assert row.status in (FAIL, WARN) and row.hint
    assert (raised.value.message, raised.value.hint) == (row.detail, row.hint)


def test_a_build_stops_at_the_first_requirement_missing_in_the_lists_order(tmp_path):
    host = FakeHost(kiwi_version="9.24.48", missing=requirements.DISK_TOOLS)
    with pytest.raises(HostError, match="kiwi 9.24.48 found"):
        requirements.require("build", context=requirements.Context(host, build_dir=tmp_path))


def test_doctor_shows_every_requirement_once():
    for purposes in doctor.SECTIONS.values():
        assert set(purposes) <= requirements.PURPOSES
    shown = [requirement.id for requirement in requirements.REQUIREMENTS
             for section in doctor.SECTIONS.values() if set(requirement.needed_for) & set(section)]
    assert sorted(shown) == sorted(requirement.id for requirement in requirements.REQUIREMENTS)


def test_a_requirement_only_some_targets_need_warns_in_doctor():
    host = FakeHost(missing=requirements.DISK_TOOLS + requirements.APT_TOOLS)
    assert doctor_row("apt tools (debian)", host).status == WARN
    assert doctor_row("host tools", host).status == FAIL


def test_install_hints_name_the_packages_of_the_hosts_distribution():
    tools = ("sgdisk", "mcopy", "mdir", "qemu-img")
    for family, hint in (("debian", "apt-get install gdisk mtools qemu-utils"),
                         ("suse", "zypper install gptfdisk mtools qemu-tools"),
                         (None, "apt-get install gdisk mtools qemu-utils, "
                                "or zypper install gptfdisk mtools qemu-tools")):
        assert runner.install_hint(*tools, family=family) == hint
        assert FakeHost(family=family).install_hint(*tools) == hint
    every_tool = (requirements.DISK_TOOLS + requirements.APT_TOOLS + requirements.ESP_FALLBACK_TOOLS
                  + requirements.UKI_TOOLS + requirements.VERITY_TOOLS + requirements.QEMU_TOOLS
                  + ("swtpm",))
    assert [tool for tool in every_tool if tool not in runner.TOOLS] == []  # the one table


def test_one_missing_tool_and_several_are_named():
    host = FakeHost(missing={"sgdisk", "blkid"})
    assert doctor_row("host tools", host).detail == "host tools missing: sgdisk, blkid"
    assert doctor_row("QEMU", host).status == PASS


def test_a_given_firmware_is_judged_instead_of_searched(tmp_path):
    given = tmp_path / "OVMF.fd"
    given.write_bytes(b"\0" * 8192)  # not TDVF: the real host's judgement (HostFacts.is_tdvf)
    [tdvf] = [r for r in requirements.evaluate("tdx", context=requirements.Context(firmware=given))
              if r.id == "TDVF firmware"]
    assert (tdvf.status, tdvf.detail, tdvf.hint) == (FAIL, f"{given} is not TDVF (no TDX metadata)", "")
    [uefi] = requirements.evaluate("boot:uefi", context=requirements.Context(firmware=given))
    assert uefi.status == PASS


def test_unknown_names_are_a_programming_error():
    with pytest.raises(AssertionError, match="no such requirement or purpose"):
        requirements.require("biuld")


def test_the_table_shows_the_hints_of_what_did_not_pass_only():
    out = io.StringIO()
    render(Console(file=out, width=200), [
        Result("disk.gpt", PASS, "intact", "why GPT"), Result("kiwi", FAIL, "missing", "install it"),
        Result("vfat", WARN, "fallback", "mtools"), Result("disk.esp", SKIP, "not checked", "why ESP")])
    text = out.getvalue()
    assert "why GPT" not in text
    assert all(line in text for line in ("kiwi: install it", "vfat: mtools", "disk.esp: why ESP"))


@pytest.mark.parametrize("name, release, stops", [
    ("leap", "16.0", True), ("debian", "13", True), ("leap", "15.6", False), ("debian", "12", False)])
def test_a_uki_build_needs_the_hooks_partition_tools_on_the_build_host(tmp_path, name, release, stops):
    request = BuildRequest(target=get_target(name, release), out_dir=tmp_path / "out",
                           cache_dir=tmp_path / "cache")
    request.cache_dir.mkdir()
    host = FakeHost(missing={"findmnt"})
    if stops:
        with pytest.raises(HostError, match="findmnt is not installed"):
            pipeline.preflight(request, request.out_dir, host)
    else:
        pipeline.preflight(request, request.out_dir, host)
