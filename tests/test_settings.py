"""Customising a build without editing the repository: options, tdx-image.toml, `summary`."""

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagebuilder.commands import boot, build
from imagebuilder.core.defaults import DEFAULT_BOOT_TIMEOUT_S
from imagebuilder.build import settings
from imagebuilder.build.pipeline import BuildRequest, compose_description
from imagebuilder.cli import main
from imagebuilder.schemas import schema
from imagebuilder.build.compose import Customisation
from imagebuilder.distros.targets import get_target

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample user@host\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's directory, the current one, holding a key."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TDX_IMAGE_CACHE_DIR", raising=False)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id.pub").write_text(KEY)
    return tmp_path


def summary(*args) -> tuple[int, dict | str]:
    result = CliRunner().invoke(main, ["summary", *args, "--json"])
    return result.exit_code, json.loads(result.stdout) if result.exit_code == 0 else result.output


def test_the_config_file_in_the_current_directory_is_read_and_the_command_line_wins(project):
    (project / "tdx-image.toml").write_text(
        'target = "debian"\npackage = ["jq", "tree"]\nsize = "6G"\nformat = "raw"\n'
        'ssh-key = "keys/id.pub"\nssh-user = "tester"\n')

    code, plan = summary("--format", "vmdk")

    assert code == 0, plan
    settings = plan["settings"]
    assert settings["package"] == {"value": ["jq", "tree"], "from": "tdx-image.toml"}
    assert settings["size"] == {"value": 6144, "from": "tdx-image.toml"}  # MiB
    assert settings["format"] == {"value": "vmdk", "from": "command line"}
    assert settings["ssh-user"] == {"value": "tester", "from": "tdx-image.toml"}
    assert settings["out"]["from"] == "default" and settings["out"]["value"] == "out/debian"
    image = plan["image"]
    assert image["file"] == "tdx-guest-debian-13.x86_64-13.0.0.vmdk"
    assert image["size"] == "6144M"
    assert {"jq", "tree", "linux-image-amd64", "systemd-ukify"} <= set(image["packages"])
    assert image["ssh_login"] == "tester (key id.pub)"
    assert plan["credentials"] == "not needed"


def test_a_config_file_elsewhere_resolves_paths_beside_itself(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("conf")
    shutil.copy(project / "keys" / "id.pub", elsewhere / "mine.pub")
    config = elsewhere / "custom.toml"
    config.write_text('ssh-key = "mine.pub"\npackage = "jq"\nout = "images"\n')

    code, plan = summary("leap", "--config", str(config))

    assert code == 0, plan
    assert plan["settings"]["ssh-key"] == {"value": str(elsewhere / "mine.pub"), "from": str(config)}
    assert plan["settings"]["out"]["value"] == str(elsewhere / "images")
    assert plan["settings"]["package"]["value"] == ["jq"]  # one string is a list of one
    assert plan["image"]["ssh_login"] == "root (key mine.pub)"
    assert plan["target"]["profile"] == "Leap16"


def test_a_summary_says_what_the_build_would_refuse_without_failing(project):
    # This Debian host has no registered SLES repositories: the build would refuse, the summary
    # says so and still shows the rest.
    code, plan = summary("sles")
    assert code == 0
    assert "no registered SLES 16.0 repositories" in plan["build_would_refuse"]
    assert plan["image"]["file"] == "tdx-guest-sles-16.0.x86_64-16.0.0.qcow2"
    assert "NetworkManager" in plan["image"]["packages"] and "wicked" not in plan["image"]["packages"]

    code, plan = summary("sles", "--mirror", "https://rmt.example.com/repo")
    assert code == 0 and plan["build_would_refuse"] is None
    assert plan["repositories"][0].startswith("https://rmt.example.com/repo/SUSE/")


def test_the_readable_summary_names_settings_and_sources(project):
    (project / "tdx-image.toml").write_text('package = ["jq"]\n')
    result = CliRunner().invoke(main, ["summary", "debian", "--size", "8G"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:3] == ["package", "jq", "tdx-image.toml"] for line in lines)
    assert any(line.split()[:3] == ["size", "8192", "command"] for line in lines)
    assert "would build: tdx-guest-debian-13.x86_64-13.0.0.qcow2" in result.output


def test_a_summary_never_shows_a_password_in_a_url(project):
    args = ["summary", "debian", "--mirror", "https://u:s3cret@mirror.example/debian",
            "--repo", "https://u:s3cret@r.example/x,bookworm,main"]
    for output in (CliRunner().invoke(main, args).output,
                   CliRunner().invoke(main, [*args, "--json"]).stdout):
        assert "s3cret" not in output and "u:***@mirror.example/debian" in output


@pytest.mark.parametrize("config, args, fragment", [
    ('bogus = 1\n', [], "unknown setting 'bogus'"),
    ('json = true\n', [], "unknown setting 'json'"),  # how to print is not a build setting
    ('package = 3\n', [], "package must be a list"),
    ('mirror = ["a", "b"]\n', [], "mirror must be one value"),
    ('[package]\nname = "jq"\n', [], "package must be a list"),
    ('size = "tiny"\n', [], "'tiny' is not a size"),
    ('size = "100M"\n', [], "too small"),
    ('package = ["jq; rm -rf /"]\n', [], "is not a package name"),
    ('ssh-user = "Root Admin"\n', ["--ssh-key", "keys/id.pub"], "is not a user name"),
    ('ssh-user = "tester"\n', [], "--ssh-user needs --ssh-key"),
    ('package = [\n', [], "cannot read tdx-image.toml"),
    ('supplier = "Example Builders"\n', [], "is not 'Name <e-mail>' or 'Name <https://url>'"),
    ('supplier = "Example <ftp://example.org>"\n', [], "is not 'Name <e-mail>'"),
])
def test_bad_settings_are_refused_before_anything_runs(project, config, args, fragment):
    (project / "tdx-image.toml").write_text(config)
    for verb in (["summary", "debian"], ["build", "debian", "--dry-run"]):
        result = CliRunner().invoke(main, [*verb, *args])
        assert result.exit_code == 2, result.output
        assert fragment in result.output
    assert sorted(p.name for p in project.iterdir()) == ["keys", "tdx-image.toml"]


def test_dry_run_composes_the_customised_description_kiwi_accepts(project):
    options = ["--package", "jq", "--size", "5G", "--format", "vmdk",
               "--ssh-key", "keys/id.pub", "--ssh-user", "tester"]
    result = CliRunner().invoke(main, ["build", "debian", "--dry-run", "--json", *options])
    assert result.exit_code == 0, result.output  # KIWI's own checks accepted it

    # The same composition, kept this time, holds what was asked for.
    custom = Customisation(packages=("jq",), size_mib=5120, image_format="vmdk",
                           ssh_key=Path("keys/id.pub"), ssh_user="tester")
    description = project / "description"
    compose_description(BuildRequest(target=get_target("debian"), out_dir=project / "out",
                                     custom=custom), description)
    image = ET.parse(description / "config.xml").getroot()
    assert "jq" in [p.get("name") for p in image.iter("package")]
    assert image.find("preferences/type").get("format") == "vmdk"
    assert image.find("preferences/type/size").text == "5120"
    assert image.find("users/user").get("name") == "tester"
    assert (description / "root/home/tester/.ssh/authorized_keys").read_text() == KEY


def test_the_target_can_come_from_the_config_file_only(project):
    (project / "tdx-image.toml").write_text('target = "leap"\n')
    code, plan = summary()
    assert code == 0 and plan["target"]["name"] == "leap"
    os.remove(project / "tdx-image.toml")
    result = CliRunner().invoke(main, ["summary"])
    assert result.exit_code == 2 and "Missing argument 'TARGET'" in result.output


def test_the_readme_options_table_is_the_list_of_settings():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- options table: generated from imagebuilder/build/settings.py -->\n")
    end = readme.index("<!-- end of the options table -->")
    assert readme[readme.index("\n", start) + 1:end] == settings.readme_table(), (
        "README's options table differs from imagebuilder/build/settings.py; paste this:\n"
        + settings.readme_table())


def test_one_list_makes_the_options_the_config_keys_and_the_recorded_inputs(project):
    assert [p.name for p in build.build_command.params] == [s.field for s in settings.SETTINGS]
    summary_command = main.commands["summary"]
    assert {p.name for p in summary_command.params} == {s.field for s in settings.SETTINGS
                                                        if s.summary}
    # What the config file may not set is refused by its key, as an unknown setting.
    for setting in settings.SETTINGS:
        (project / "tdx-image.toml").write_text(f"{setting.key} = {'true' if setting.flag else '1'}\n")
        result = CliRunner().invoke(main, ["summary", "debian"])
        assert (f"unknown setting {setting.key!r}" in result.output) == (not setting.configurable), (
            setting.key, result.output)
    # build.json's inputs: the recorded settings, and the schema knows each of them.
    schema_inputs = schema("build")["properties"]["inputs"]
    recorded = settings.recorded(BuildRequest(target=get_target("debian"), out_dir=project / "o"))
    assert set(recorded) == {s.field for s in settings.SETTINGS if s.recorded}
    assert set(recorded) <= set(schema_inputs["required"])
    # A login in the mirror's URL is recorded as *** (build.json and the provenance take these).
    with_login = BuildRequest(target=get_target("debian"), out_dir=project / "o",
                              mirror="https://u:s3cret@mirror.example/debian")
    assert settings.recorded(with_login)["mirror"] == "https://u:***@mirror.example/debian"


def test_the_boot_timeout_has_one_default_and_an_option(project):
    assert BuildRequest(target=get_target("debian"), out_dir=project).boot_timeout == \
        DEFAULT_BOOT_TIMEOUT_S == next(p for p in boot.boot_command.params if p.name == "timeout").default
    code, plan = summary("debian", "--boot-timeout", "900")
    assert code == 0 and plan["settings"]["boot-timeout"] == {"value": 900.0, "from": "command line"}
    result = CliRunner().invoke(main, ["summary", "debian", "--boot-timeout", "nan"])
    assert result.exit_code == 2 and "not a finite number" in result.output
