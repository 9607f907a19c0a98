"""The host requirements are one list: the verbs and doctor ask it and say the same thing."""

import io
from pathlib import Path

import pytest
from rich.console import Console

from imagebuilder.host import buildhost, os_release, requirements, runner, virt
from imagebuilder.commands import doctor
from imagebuilder.core.errors import HostError
from imagebuilder.core.results import FAIL, PASS, SKIP, WARN, Result, render


def doctor_row(name: str) -> Result:
    """The requirement's row in doctor's table (evaluating only its section)."""
    [needed_for] = [r.needed_for for r in requirements.REQUIREMENTS if r.id == name]
    [section] = [s for s, purposes in doctor.SECTIONS.items() if set(needed_for) & set(purposes)]
    return next(check for check in doctor.host_checks(section, Path(".")) if check.id == name)


@pytest.mark.parametrize("name, fake", [
    ("root", lambda mp: mp.setattr(requirements.os, "geteuid", lambda: 1000)),
    ("host tools", lambda mp: mp.setattr(runner, "missing", lambda tools: [t for t in tools if t == "sgdisk"])),
    ("kiwi", lambda mp: mp.setattr(buildhost, "kiwi_version", lambda: "9.24.48")),
    ("loop devices", lambda mp: mp.setattr(requirements, "LOOP_CONTROL", "/nonexistent/loop-control")),
    ("UEFI firmware", lambda mp: mp.setattr(virt, "OVMF_CANDIDATES", ())),
    ("swtpm", lambda mp: mp.setattr(runner, "missing", lambda tools: list(tools))),
])
def test_a_verb_refuses_with_the_words_and_hint_doctor_shows(name, fake, monkeypatch):
    fake(monkeypatch)
    row = doctor_row(name)
    with pytest.raises(HostError) as raised:
        requirements.require(name)
    assert row.status in (FAIL, WARN) and row.hint
    assert (raised.value.message, raised.value.hint) == (row.detail, row.hint)


def test_a_build_stops_at_the_first_requirement_missing_in_the_lists_order(monkeypatch, tmp_path):
    monkeypatch.setattr(requirements.os, "geteuid", lambda: 0)
    monkeypatch.setattr(buildhost, "kiwi_command", lambda: "/usr/bin/kiwi-ng")
    monkeypatch.setattr(buildhost, "kiwi_version", lambda: "9.24.48")
    monkeypatch.setattr(runner, "missing", lambda tools: list(tools))
    with pytest.raises(HostError, match="kiwi 9.24.48 found"):
        requirements.require("build", context=requirements.Context(build_dir=tmp_path))


def test_doctor_shows_every_requirement_once():
    for purposes in doctor.SECTIONS.values():
        assert set(purposes) <= requirements.PURPOSES
    shown = [requirement.id for requirement in requirements.REQUIREMENTS
             for section in doctor.SECTIONS.values() if set(requirement.needed_for) & set(section)]
    assert sorted(shown) == sorted(requirement.id for requirement in requirements.REQUIREMENTS)


def test_a_requirement_only_some_targets_need_warns_in_doctor(monkeypatch):
    monkeypatch.setattr(runner, "missing", lambda tools: list(tools))
    assert doctor_row("apt tools (debian)").status == WARN
    assert doctor_row("host tools").status == FAIL


def test_install_hints_name_the_packages_of_the_hosts_distribution(monkeypatch):
    tools = ("sgdisk", "mcopy", "mdir", "qemu-img")
    for family, hint in (("debian", "apt-get install gdisk mtools qemu-utils"),
                         ("suse", "zypper install gptfdisk mtools qemu-tools"),
                         (None, "apt-get install gdisk mtools qemu-utils, "
                                "or zypper install gptfdisk mtools qemu-tools")):
        monkeypatch.setattr(os_release, "host_family", lambda family=family: family)
        assert runner.install_hint(*tools) == hint
    every_tool = (requirements.DISK_TOOLS + requirements.APT_TOOLS + requirements.ESP_FALLBACK_TOOLS
                  + requirements.QEMU_TOOLS + ("swtpm",))
    assert [tool for tool in every_tool if tool not in runner.TOOLS] == []  # the one table


def test_one_missing_tool_and_several_are_named(monkeypatch):
    monkeypatch.setattr(runner, "missing", lambda tools: [t for t in tools if t in ("sgdisk", "blkid")])
    assert doctor_row("host tools").detail == "host tools missing: sgdisk, blkid"
    assert doctor_row("QEMU").status == PASS


def test_a_given_firmware_is_judged_instead_of_searched(tmp_path):
    given = tmp_path / "OVMF.fd"
    given.write_bytes(b"\0" * 8192)
    [tdvf] = [r for r in requirements.check("tdx", context=requirements.Context(firmware=given))
              if r.id == "TDVF firmware"]
    assert (tdvf.status, tdvf.detail, tdvf.hint) == (FAIL, f"{given} is not TDVF (no TDX metadata)", "")
    [uefi] = requirements.check("boot:uefi", context=requirements.Context(firmware=given))
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
