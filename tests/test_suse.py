"""The SUSE targets: releases as data, the host model, a registered host's zypper
repositories, SCC refusal, and secrets kept out of every output."""

import json
import os
import xml.etree.ElementTree as ET
import shutil
from datetime import date
from pathlib import Path

import pytest

from imagebuilder.host import buildhost
from imagebuilder.core.errors import CredentialsError, InputError, RepositoryError
from imagebuilder.distros.repos import Credentials, host_zypper_repositories
from imagebuilder.distros.targets import TARGETS, get_target
from tests.conftest import FakeHost, run_cli

ZYPP_SAMPLE = Path(__file__).parent / "data" / "zypp"  # files as SUSEConnect writes them
RMT_PASSWORD = "rmt-pass:w/rd@1"
SCC_TOKEN = "exampleToken_AbC123-xyz"


def plan_of(result) -> dict:
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    return plan


def added_repos(command: list[str]) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == "--add-repo"]


@pytest.mark.parametrize("target, release, repos", [
    # Leap 16: one repository per architecture, updates published into it (openSUSE-repos).
    ("leap", None, ["https://m.example/distribution/leap/16.0/repo/oss/x86_64/"]),
    ("leap", "15.6", ["https://m.example/distribution/leap/15.6/repo/oss/",
                      "https://m.example/update/leap/15.6/oss/",
                      "https://m.example/update/leap/15.6/sle/",
                      "https://m.example/update/leap/15.6/backports/"]),
    # SLES 16: the product's repositories, no modules.
    ("sles", None, ["https://m.example/SUSE/Products/SLE-Product-SLES/16.0/x86_64/product/",
                    "https://m.example/SUSE/Updates/SLE-Product-SLES/16.0/x86_64/update/"]),
    ("sles", "15-SP7", [f"https://m.example/SUSE/{kind}/{product}/15-SP7/x86_64/{leaf}/"
                        for product in ("SLE-Product-SLES", "SLE-Module-Basesystem",
                                        "SLE-Module-Server-Applications")
                        for kind, leaf in (("Products", "product"), ("Updates", "update"))]),
    ("debian", "12", ["https://m.example", "https://m.example", "https://m.example-security"]),
])
def test_a_release_picks_its_repositories(target, release, repos):
    chosen = get_target(target, release)
    assert chosen.chosen.name == (release or TARGETS[target].releases[0].name)
    assert [r.url for r in chosen.repositories("https://m.example")] == repos


def test_the_defaults_are_the_16_0_releases():
    assert [TARGETS[name].chosen.name for name in ("leap", "sles")] == ["16.0", "16.0"]
    assert [TARGETS[name].profile for name in ("leap", "sles")] == ["Leap16", "SLES16"]


def test_ltss_adds_its_update_repository_only_where_suse_sells_it():
    urls = [r.url for r in get_target("sles", "15-SP5").repositories("https://m.example", ltss=True)]
    assert urls[-1] == "https://m.example/SUSE/Updates/SLE-Product-SLES/15-SP5-LTSS/x86_64/update/"
    for target, release in (("sles", "16.0"), ("sles", "15-SP7"), ("leap", "15.6")):
        with pytest.raises(InputError, match="--ltss: .* has no LTSS"):
            get_target(target, release).repositories("https://m.example", ltss=True)


@pytest.mark.parametrize("target, release, today, warned", [
    ("leap", "15.5", date(2026, 12, 4), "2024-12-31"),
    ("leap", "15.6", date(2026, 4, 30), None),  # the last day is still supported
    ("leap", "15.6", date(2026, 5, 1), "2026-04-30"),
    ("sles", "15-SP6", date(2026, 1, 1), "2025-12-31"),
    ("sles", "15-SP7", date(2026, 12, 4), None),
    ("leap", "16.0", date(2026, 12, 4), None),
])
def test_end_of_life_is_said_with_its_date_and_what_to_build_instead(target, release, today, warned):
    warning = get_target(target, release).chosen.end_of_life_warning(today)
    if warned is None:
        assert warning is None
    else:
        assert f"end of general support on {warned}" in warning and "--release 16.0" in warning
        assert ("--ltss" in warning) == (target == "sles")


def test_a_build_of_an_ended_release_warns_on_build_summary_and_doctor(tmp_path):
    result = run_cli("build", "leap", "--release", "15.5", "--dry-run", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "warning: openSUSE Leap 15.5 reached the end of general support on 2024-12-31: it gets "
        "no more fixes; build leap --release 16.0 instead")
    summary = json.loads(run_cli("summary", "leap", "--release", "15.5", "--json").stdout)
    assert "2024-12-31" in summary["end_of_life"]
    assert run_cli("build", "leap", "--dry-run", "--out", tmp_path / "o").stderr == ""
    from imagebuilder.commands.doctor import release_check
    assert "15.5 (2024-12-31)" in release_check("leap").detail


def test_a_gone_repository_of_an_ended_release_says_why(tmp_path, repo_server, monkeypatch):
    from imagebuilder.build import pipeline
    from imagebuilder.host import locks

    monkeypatch.setattr(locks, "LOCK_DIR", tmp_path / "locks")
    request = pipeline.BuildRequest(target=get_target("leap", "15.5"), out_dir=tmp_path / "leap",
                                    mirror=f"{repo_server}/gone", cache_dir=tmp_path / "cache")
    with pytest.raises(RepositoryError) as raised:  # a SUSE 15 host as the build wants it
        pipeline.build(request, lambda event: None, FakeHost())
    assert raised.value.exit_code == 4 and "end of general support on 2024-12-31" in raised.value.hint


def test_the_composed_description_names_the_release(tmp_path):
    from imagebuilder.build.pipeline import BuildRequest, compose_description

    request = BuildRequest(target=get_target("sles", "15-SP6"), out_dir=tmp_path / "out")
    compose_description(request, tmp_path / "d")
    config = (tmp_path / "d" / "config.xml").read_text()
    assert 'name="tdx-guest-sles-15-SP6"' in config and "<version>15.6.0</version>" in config


@pytest.mark.parametrize("target, release, known", [
    ("leap", "15.4", "16.0, 15.6, 15.5"),
    ("sles", "15-SP4", "16.0, 15-SP7, 15-SP6, 15-SP5"),
    ("debian", "13", "12"),
])
def test_unknown_release_is_one_line_naming_the_known_ones(target, release, known):
    result = run_cli("build", target, "--release", release, "--dry-run")
    assert result.returncode == 2
    assert result.stderr == f"error: unknown release '{release}' for {target} (known: {known})\n"


def write_os_release(tmp_path, text: str) -> str:
    path = tmp_path / "os-release"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("os_release, builds", [
    ('NAME="openSUSE Leap"\nVERSION_ID="15.5"\nID="opensuse-leap"\nPRETTY_NAME="openSUSE Leap 15.5"\n', 15),
    ('NAME="SLES"\nVERSION_ID="15.6"\nID="sles"\nPRETTY_NAME="SUSE Linux Enterprise Server 15 SP6"\n', 15),
    ('NAME="openSUSE Leap"\nVERSION_ID="16.0"\nID="opensuse-leap"\n', 16),
    ('NAME="SLES"\nVERSION_ID="16.0"\nID="sles"\n', 16),
    ('NAME="openSUSE Tumbleweed"\nVERSION_ID="20260101"\nID="opensuse-tumbleweed"\n', None),
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n', None),
])
def test_suse_releases_build_on_a_suse_host_of_their_generation(tmp_path, os_release, builds):
    path = write_os_release(tmp_path, os_release)
    for name, release in (("leap", "16.0"), ("leap", "15.6"), ("sles", "16.0"), ("sles", "15-SP5")):
        target = get_target(name, release)
        problem = buildhost.build_host_problem(target, path)
        assert (problem is None) == (builds == target.chosen.generation), problem
    assert buildhost.build_host_problem(TARGETS["debian"], path) is None


def test_a_suse_build_on_this_debian_host_is_refused_at_once(tmp_path):
    if buildhost.build_host_problem(TARGETS["leap"]) is None:
        pytest.skip("this host is a SUSE 15 host")
    out = tmp_path / "leap"
    result = run_cli("build", "leap", "--release", "15.6", "--out", out)
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: openSUSE Leap 15.6 builds on a SUSE 15 host")
    assert "ndb" in lines[0] and lines[0].endswith(
        "(build in the target's own container: sudo tdx-image build leap --release 15.6 --container)")
    assert list(tmp_path.iterdir()) == []


def test_a_registered_hosts_ltss_and_16_0_repositories_are_told_apart(tmp_path):
    (tmp_path / "etc/zypp/repos.d").mkdir(parents=True)
    (tmp_path / "etc/zypp/repos.d/sle.repo").write_text("".join(
        f"[{alias}]\nenabled=1\nbaseurl=https://updates.suse.com/SUSE/{path}?tok\n"
        for alias, path in (("pool", "Products/SLE-Product-SLES/15-SP5/x86_64/product/"),
                            ("ltss", "Updates/SLE-Product-SLES/15-SP5-LTSS/x86_64/update/"),
                            ("sles16", "Products/SLE-Product-SLES/16.0/x86_64/product/"))))
    plain, others = host_zypper_repositories("15-SP5", root=str(tmp_path))
    assert [repo.alias for repo in plain] == ["pool"] and others == ["16.0"]
    with_ltss, _ = host_zypper_repositories("15-SP5", root=str(tmp_path), ltss=True)
    assert [repo.alias for repo in with_ltss] == ["pool", "ltss"]
    assert [repo.alias for repo in host_zypper_repositories("16.0", root=str(tmp_path))[0]] == ["sles16"]


def test_registered_host_repositories_are_read_with_tokens_and_credentials():
    repositories, others = host_zypper_repositories("15-SP5", root=str(ZYPP_SAMPLE))
    assert others == ["15-SP4"]  # the disabled debug repository and non-SLE ones are left out
    rmt, scc = repositories  # credentials first: KIWI pairs them with the leading repositories
    assert rmt.url == ("https://rmt.example.com/repo/SUSE/Updates/SLE-Module-Basesystem/15-SP5/"
                       "x86_64/update/")
    assert (rmt.token, rmt.authenticated) == ("", True)
    assert rmt.credentials == Credentials("SCC_0123456789abcdef", RMT_PASSWORD)
    assert scc.url == "https://updates.suse.com/SUSE/Products/SLE-Product-SLES/15-SP5/x86_64/product"
    assert (scc.token, scc.credentials, scc.authenticated) == (SCC_TOKEN, None, False)
    assert scc.kiwi_add_repo().startswith(f"{scc.url}?{SCC_TOKEN},rpm-md,")
    assert scc.probe_url().endswith(f"/product/repodata/repomd.xml?{SCC_TOKEN}")
    assert SCC_TOKEN not in repr(scc.url) and RMT_PASSWORD not in repr(rmt)


def test_a_repository_naming_a_missing_credentials_file_is_a_credentials_error(tmp_path):
    shutil.copytree(ZYPP_SAMPLE, tmp_path / "root")
    (tmp_path / "root/etc/zypp/credentials.d/Basesystem_Module_15_SP5_x86_64").unlink()
    with pytest.raises(CredentialsError, match="credentials file .* does not exist"):
        host_zypper_repositories("15-SP5", root=str(tmp_path / "root"))


def test_a_broken_repo_file_is_named(tmp_path):
    (tmp_path / "etc/zypp/repos.d").mkdir(parents=True)
    (tmp_path / "etc/zypp/repos.d/broken.repo").write_text("baseurl=https://x/15-SP5/\n")
    with pytest.raises(InputError, match="broken.repo"):
        host_zypper_repositories("15-SP5", root=str(tmp_path))


def test_sles_uses_the_registered_hosts_repositories_and_logs_no_secret():
    env = dict(os.environ, TDX_IMAGE_ZYPP_ROOT=str(ZYPP_SAMPLE))
    plan = plan_of(run_cli("build", "sles", "--release", "15-SP5", "--dry-run", "--json", env=env))
    command = plan["command"]
    repos = added_repos(command)
    assert repos[0].startswith("https://rmt.example.com/repo/SUSE/Updates/SLE-Module-Basesystem/")
    assert repos[1].startswith("https://updates.suse.com/SUSE/Products/SLE-Product-SLES/15-SP5/"
                               "x86_64/product?***,")
    assert command.count("--add-repo-credentials") == 1 and plan["note"] is None
    text = json.dumps(plan)
    assert SCC_TOKEN not in text and RMT_PASSWORD not in text


def test_sles_off_a_registered_host_is_checked_against_an_rmt_layout_and_says_so(tmp_path):
    env = dict(os.environ, TDX_IMAGE_ZYPP_ROOT=str(tmp_path))
    plan = plan_of(run_cli("build", "sles", "--release", "15-SP6", "--dry-run", "--json", env=env))
    assert plan["note"].startswith("this host has no registered SLES 15-SP6 repositories")
    assert all(repo.startswith("https://rmt.invalid/repo/SUSE/") for repo in added_repos(plan["command"]))


def test_sles_without_a_registered_release_says_what_works(monkeypatch):
    monkeypatch.setenv("TDX_IMAGE_ZYPP_ROOT", str(ZYPP_SAMPLE))
    with pytest.raises(RepositoryError,
                       match=r"no registered SLES 15-SP6 .*\(it has 15-SP4, 15-SP5\)") as raised:
        get_target("sles", "15-SP6").repositories(None)
    assert "--mirror https://rmt.example.com/repo" in raised.value.hint


@pytest.mark.parametrize("mirror", ["https://updates.suse.com", "https://updates.suse.com/SUSE/"])
def test_plain_scc_login_against_updates_suse_com_is_refused(mirror):
    env = dict(os.environ, TDX_IMAGE_REPO_USER="SCC_user", TDX_IMAGE_REPO_PASSWORD="hunter2")
    result = run_cli("build", "sles", "--mirror", mirror, "--dry-run", env=env)
    assert result.returncode == 5
    assert result.stderr.startswith(f"error: {mirror} does not take SCC username/password")
    assert "registered SLES host" in result.stderr and "RMT" in result.stderr
    assert "hunter2" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_user_credentials_do_not_mix_with_the_hosts():
    env = dict(os.environ, TDX_IMAGE_ZYPP_ROOT=str(ZYPP_SAMPLE), TDX_IMAGE_REPO_USER="u",
               TDX_IMAGE_REPO_PASSWORD="p")
    result = run_cli("build", "sles", "--release", "15-SP5", "--dry-run", env=env)
    assert result.returncode == 2 and "with --mirror" in result.stderr


def test_suse_description_carries_keys_registration_product_and_nic_naming():
    description = TARGETS["leap"].description_dir
    config = (description / "config.xml").read_text()
    for package in ("openSUSE-build-key", "suse-build-key", "SUSEConnect"):
        assert f'<package name="{package}"/>' in config
    assert "net.ifnames" not in config  # the measured command line stays free of NIC policy
    script = (description / "config.sh").read_text()
    assert "suseSetupProduct" in script and "suseImportBuildKey" in script
    rule = (description / "root/etc/udev/rules.d/70-tdx-lan.rules").read_text()
    assert 'NAME="lan%n"' in rule
    assert "BOOTPROTO='dhcp'" in (description / "root/etc/sysconfig/network/ifcfg-lan0").read_text()


def test_tokens_and_passwords_of_the_hosts_repositories_are_secrets(monkeypatch, tmp_path):
    from imagebuilder.build.pipeline import BuildRequest
    from imagebuilder.host.runner import Redactor

    monkeypatch.setenv("TDX_IMAGE_ZYPP_ROOT", str(ZYPP_SAMPLE))
    request = BuildRequest(target=get_target("sles", "15-SP5"), out_dir=tmp_path / "sles")
    credentials = request.credentials()
    assert credentials == Credentials("SCC_0123456789abcdef", RMT_PASSWORD)
    secrets = request.secrets(credentials)
    assert SCC_TOKEN in secrets and RMT_PASSWORD in secrets
    # What KIWI writes once it has put the login into the URL, and the token URL.
    line = (f"https://SCC_0123456789abcdef:{RMT_PASSWORD}@rmt.example.com/repo "
            f"{request.repositories[1].full_url}")
    assert RMT_PASSWORD not in Redactor(secrets)(line) and SCC_TOKEN not in Redactor(secrets)(line)


def test_suse_repositories_are_pinned_to_the_build_hosts_signing_keys(tmp_path, monkeypatch):
    from imagebuilder.distros import repos

    monkeypatch.setattr(repos, "SUSE_KEYS_DIR", tmp_path)
    assert {repo.signing_keys for repo in get_target("leap").repositories(None)} == {()}
    for name in ("gpg-pubkey-29b700a4-62b07e22.asc", "gpg-pubkey-39db7c82-5f68629b.asc", "README"):
        (tmp_path / name).write_text("key\n")
    keys = (str(tmp_path / "gpg-pubkey-29b700a4-62b07e22.asc"),
            str(tmp_path / "gpg-pubkey-39db7c82-5f68629b.asc"))
    leap = get_target("leap").repositories(None)
    assert {repo.signing_keys for repo in leap} == {keys}
    assert leap[0].kiwi_add_repo().split(",")[6] == "{" + ";".join(f"file://{k}" for k in keys) + "}"
    sles = get_target("sles", "15-SP5").repositories("https://rmt.example/repo")
    assert {repo.signing_keys for repo in sles} == {keys}


@pytest.mark.parametrize("target, release, network, product", [
    ("leap", "16.0", "NetworkManager", "Leap-release"),
    ("leap", "15.5", "wicked", "openSUSE-release"),
    ("sles", "16.0", "NetworkManager", "SLES-release"),
    ("sles", "15-SP7", "wicked", "sles-release"),
])
def test_each_generation_gets_its_network_stack_and_product(target, release, network, product, tmp_path):
    from imagebuilder.build.pipeline import BuildRequest, compose_description

    summary = json.loads(run_cli("summary", target, "--release", release, "--json").stdout)
    packages = summary["image"]["packages"]
    assert network in packages and ({"wicked", "NetworkManager"} - {network}).isdisjoint(packages)
    composed = compose_description(BuildRequest(target=get_target(target, release),
                                                 out_dir=tmp_path / "o"), tmp_path / "d")
    profile = get_target(target, release).profile
    sections = ET.parse(composed.path / "config.xml").getroot().iterfind("packages")
    bootstrap = {package.get("name") for section in sections if section.get("type") == "bootstrap"
                 and profile in (section.get("profiles") or profile).split(",")
                 for package in section.iterfind("package")}
    assert product in bootstrap and not {"openSUSE-release", "sles-release", "SLES-release",
                                         "Leap-release"} - {product} & bootstrap
    script = (composed.path / "config.sh").read_text()
    assert "systemctl mask suseconnect-keepalive.timer" in script
    assert "rm -f /root/.zypp/credentials.cat" in script
