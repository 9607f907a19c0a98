"""The command line as users meet it: one-line errors, exit codes, dry runs."""

import json
import os
import pytest

from tests.conftest import run_cli


def test_unknown_target_is_one_line_with_choices():
    result = run_cli("build", "fedora", "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: unknown target 'fedora' "
                                     "(choose one of: debian, leap, sles)")


@pytest.mark.parametrize("target, profile, repo_host", [
    ("leap", "Leap16", "https://download.opensuse.org/distribution/leap/16.0/repo/oss/x86_64/"),
    ("sles", "SLES16", "https://rmt.example/repo/SUSE/Products/SLE-Product-SLES/16.0/"),
])
def test_suse_dry_runs_print_description_and_command(target, profile, repo_host, tmp_path):
    env = dict(os.environ, TDX_IMAGE_REPO_USER="SCC_user", TDX_IMAGE_REPO_PASSWORD="hunter2",
               TMPDIR=str(tmp_path))
    mirror = ["--mirror", "https://rmt.example/repo"] if target == "sles" else []
    out = tmp_path / "images" / target
    result = run_cli("build", target, "--dry-run", "--json", *mirror, "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    command = plan["command"]
    assert command[command.index("--profile") + 1] == profile
    assert command[command.index("--description") + 1] == plan["description"]
    assert plan["out"] == str(out) and plan["description"].startswith(f"{out.parent}/.{target}.staging-")
    assert any(value.startswith(repo_host) for value in command)
    assert "hunter2" not in result.stdout + result.stderr
    assert ("--add-repo-credentials" in command) == (target == "sles")
    assert list(tmp_path.iterdir()) == []  # nothing left: no temp dir, no --out


def test_dry_run_adds_user_repositories_after_the_targets(tmp_path):
    coco = "https://download.opensuse.org/repositories/devel:/coco:/Leap15.5/15.5/"
    result = run_cli("build", "leap", "--dry-run", "--json", "--repo", coco, "--out", tmp_path / "l")
    command = json.loads(result.stdout)["command"]
    repos = [command[i + 1] for i, word in enumerate(command) if word == "--add-repo"]
    assert repos[-1].startswith(coco + ",rpm-md,") and len(repos) == 2


def test_bad_repo_option_is_input_error():
    result = run_cli("build", "leap", "--dry-run", "--repo", "download.opensuse.org/x")
    assert result.returncode == 2 and result.stderr.startswith("error: --repo")


def test_the_target_argument_completes_in_the_shell():
    env = dict(os.environ, _TDX_IMAGE_COMPLETE="bash_complete", COMP_WORDS="tdx-image build l",
               COMP_CWORD="2")
    result = run_cli(env=env)
    assert result.stdout.split() == ["plain,leap"]


def test_help_lists_the_exit_codes():
    result = run_cli("--help")
    for line in ("2    bad input", "3    the host cannot", "130  interrupted"):
        assert line in result.stdout
