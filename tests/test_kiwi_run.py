"""The KIWI runner: command line, phases, redaction, failure classification, signals.

A stand-in kiwi-ng (a shell script printing what KIWI prints) reaches the error paths; the
real KIWI runs in the integration tests.
"""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from imagebuilder.build import kiwi
from imagebuilder.core.errors import BuildError, CredentialsError, HostError, Interrupted, RepositoryError
from imagebuilder.distros.repos import Repository
from tests.conftest import HostDpkgLock

REPO = Repository("oss", "https://download.opensuse.org/distribution/leap/15.5/repo/oss/", "rpm-md")


def fake_kiwi(tmp_path: Path, body: str) -> str:
    script = tmp_path / "kiwi-ng"
    script.write_text("#!/bin/bash\n" + body)
    script.chmod(0o755)
    return str(script)


def make_run(tmp_path, kiwi_path, **kwargs) -> kiwi.KiwiInvocation:
    return kiwi.KiwiInvocation(kiwi=kiwi_path, description=tmp_path / "desc", target_dir=tmp_path / "t",
                        cache_dir=tmp_path / "cache", repositories=[REPO], **kwargs)


def test_command_puts_global_options_first_and_pairs_credentials(tmp_path):
    sles = Repository("pool", "https://rmt.example/repo/x/", "rpm-md", authenticated=True)
    run = make_run(tmp_path, "kiwi-ng", profile="SLES", credentials_file=tmp_path / "c")
    run.repositories = [sles, REPO]
    command = run.command()
    assert command[:6] == ["kiwi-ng", "--debug", "--shared-cache-dir", str(tmp_path / "cache"),
                           "--profile", "SLES"]
    assert command.index("system") > command.index("--profile")
    assert command.count("--add-repo") == 2
    # one credentials entry, for the leading authenticated repository only
    assert command.count("--add-repo-credentials") == 1


def test_phases_are_reported_in_order_and_log_is_redacted(tmp_path):
    script = fake_kiwi(tmp_path, r"""
echo '[ INFO    ]: 10:00:00 | Preparing new root system'
printf '[ INFO    ]: Processing: [##   ] 10%%\r[ INFO    ]: Processing: [#####] 100%%\n'
echo '[ DEBUG   ]: 10:00:01 | repo https://SCC_user:hunter2@rmt.example/repo'
echo '[ INFO    ]: 10:00:02 | Installing system (chroot) for build type: oem'
echo '[ INFO    ]: 10:00:03 | Result files:'
""")
    phases = []
    log = tmp_path / "build.log"
    kiwi.execute(make_run(tmp_path, script), log, phases.append, secrets=["hunter2", "SCC_user:hunter2"])
    assert phases == ["prepare", "install packages", "done"]
    text = log.read_text()
    assert "hunter2" not in text and "https://***@rmt.example/repo" in text
    assert "[ INFO    ]: Processing: [##   ] 10%" in text.splitlines()  # \r ends a line too


@pytest.mark.parametrize("error_line, expected", [
    ("KiwiRepositorySetupError: Repo http://x is not reachable", RepositoryError),
    ("KiwiCommandError: apt-get: Failed to fetch http://m/debian/Release", RepositoryError),
    ("KiwiCommandError: zypper: HTTP 401 Unauthorized", CredentialsError),
    ("KiwiDiskGeometryError: too small", BuildError),
    # issue 20: a lock is the host's business, never a mirror error
    ("KiwiDebianBootstrapError: KiwiCommandError: apt-get: stderr: E: Could not get lock "
     "/var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)", HostError),
])
def test_kiwi_failures_are_classified_by_exception_name(tmp_path, error_line, expected):
    script = fake_kiwi(tmp_path, f"echo '[ ERROR   ]: 10:00:00 | {error_line}'; exit 1\n")
    with pytest.raises(expected) as raised:
        kiwi.execute(make_run(tmp_path, script), tmp_path / "log", lambda phase: None)
    assert error_line.split(":")[0] in str(raised.value)
    assert str(tmp_path / "log") in str(raised.value)


def test_sigterm_stops_kiwi_and_raises_interrupted(tmp_path):
    marker = tmp_path / "kiwi-saw-sigint"
    script = fake_kiwi(tmp_path, f"trap 'touch {marker}; exit 1' INT\n"
                                 "echo '[ INFO    ]: 10:00:00 | Preparing new root system'\n"
                                 "while true; do sleep 0.1; done\n")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(Interrupted, match="SIGTERM"):
        kiwi.execute(make_run(tmp_path, script), tmp_path / "log", lambda phase: None)
    assert marker.exists(), "KIWI must get SIGINT to unwind its own mounts"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_signal_leaves_no_orphans_of_kiwi(tmp_path):
    """KIWI exits on Ctrl-C while the apt-get/dpkg it started keep running (issue 7, defect 5):
    whatever is left of its process group is stopped and reaped, and a second signal changes
    nothing."""
    apt = tmp_path / "apt.pid"
    script = fake_kiwi(tmp_path, f"(trap '' INT; exec sleep 300) & echo $! > {apt}\n"
                                 "trap 'sleep 1; exit 1' INT\n"  # KIWI unwinding its mounts
                                 "echo '[ INFO    ]: 10:00:00 | Installing bootstrap packages'\n"
                                 "while true; do sleep 0.1; done\n")
    for delay in (1.0, 1.5):
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(Interrupted, match="SIGINT"):
        kiwi.execute(make_run(tmp_path, script), tmp_path / "log", lambda phase: None)
    time.sleep(1)  # the second signal arrived while the first was being handled
    pid = int(apt.read_text())
    assert not Path(f"/proc/{pid}").exists(), "KIWI's child survived it"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_esp_fallback_puts_the_shim_first_on_path(tmp_path):
    run = make_run(tmp_path, "kiwi-ng", esp_fallback_dir=tmp_path / "esp")
    run.prepare_esp_fallback()
    env = run.environment()
    assert env["PATH"].split(":")[0] == str(tmp_path / "esp" / "bin")
    for name in kiwi.SHIMMED_COMMANDS:
        assert (tmp_path / "esp" / "bin" / name).resolve() == kiwi.HOSTSHIM
    assert env["TDX_IMAGE_ESP_STATE"] == str(tmp_path / "esp" / "state")



def test_a_full_disk_under_the_log_fails_the_build_with_exit_3_and_hangs_nothing(tmp_path):
    """Issue 20: the log reader died on ENOSPC, KIWI blocked writing to the full pipe and the
    build hung for 9+ minutes.  KIWI here writes far more than a pipe holds, then succeeds."""
    script = fake_kiwi(tmp_path, "for i in $(seq 20000); do echo \"[ DEBUG   ]: line $i of KIWI's log\"; done\n")
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("hung")))
    signal.alarm(60)
    try:
        with pytest.raises(HostError) as raised:
            kiwi.execute(make_run(tmp_path, script), Path("/dev/full"), lambda phase: None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "cannot write KIWI's log /dev/full: No space left on device" in str(raised.value)
    assert raised.value.exit_code == 3


def test_kiwis_temporary_files_and_the_apt_shim_are_the_builds_own(tmp_path):
    run = make_run(tmp_path, "kiwi-ng", temp_dir=tmp_path / "staging" / "kiwi-tmp")
    command = run.command()
    assert command[command.index("--temp-dir") + 1] == str(tmp_path / "staging" / "kiwi-tmp")
    assert command.index("--temp-dir") < command.index("system")  # a global option
    env = run.environment()
    assert env["PATH"].split(":")[0] == str(kiwi.HOSTSHIM_DIR)
    assert env["TDX_IMAGE_APT_STATUS"] == str(tmp_path / "t" / "build/image-root/var/lib/dpkg/status.kiwi")
    prepare = make_run(tmp_path, "kiwi-ng", prepare_root=tmp_path / "prepare" / "root")
    assert prepare.environment()["TDX_IMAGE_APT_STATUS"] == str(
        tmp_path / "prepare/root/var/lib/dpkg/status.kiwi")


def test_the_apt_shim_names_the_status_file_in_the_image_root_last(tmp_path):
    """KIWI's own -c config comes first on apt-get's line; the shim's -o after it wins."""
    real = tmp_path / "bin" / "apt-get"
    real.parent.mkdir()
    real.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    real.chmod(0o755)
    env = dict(make_run(tmp_path, "kiwi-ng").environment())
    env["PATH"] = f"{kiwi.HOSTSHIM_DIR}:{real.parent}:/usr/bin:/bin"
    ran = subprocess.run(["apt-get", "-q", "-c", "/root/kiwi_apt.config", "-y", "update"], env=env,
                         capture_output=True, text=True, check=True)
    status = tmp_path / "t" / "build/image-root/var/lib/dpkg/status.kiwi"
    assert ran.stdout.splitlines() == ["-q", "-c", "/root/kiwi_apt.config", "-y", "update", "-o",
                                       f"Dir::State::status={status}"]
    assert status.is_file()


# KIWI 11.1's apt-get config for the bootstrap on the host (kiwi/repository/template/apt.py,
# PackageManagerTemplateAptGet.host_header), with its shared apt-get directory.
KIWI_HOST_APT_CONFIG = """Dir "/";
Dir::State "{shared}/";
Dir::State::status "/var/lib/dpkg/status.kiwi";
Dir::Cache "{shared}/";
Dir::Etc "{shared}/";
"""


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/apt-get").exists(),
                    reason="holds the host's dpkg lock (root) and runs the host's apt-get")
def test_kiwis_bootstrap_apt_get_runs_while_another_process_holds_the_hosts_dpkg_lock(tmp_path):
    """Issue 20, with the real apt-get: KIWI's bootstrap download ('install' with
    Debug::pkgDPkgPm=1) failed with 'Could not get lock /var/lib/dpkg/lock-frontend' while apt
    or unattended-upgrades ran; through the shim it takes the image root's lock instead."""
    shared = tmp_path / "shared"
    for name in ("sources.list.d", "preferences.d", "auth.conf.d", "apt.conf.d"):
        (shared / name).mkdir(parents=True)
    config = tmp_path / "kiwi_apt.config"
    config.write_text(KIWI_HOST_APT_CONFIG.format(shared=shared))
    bootstrap = ["apt-get", "-q", "-c", str(config), "-y", "install", "-oDebug::pkgDPkgPm=1"]
    with HostDpkgLock() as dpkg_lock:
        dpkg_lock.hold()
        without_shim = subprocess.run(bootstrap, capture_output=True, text=True)
        env = make_run(tmp_path, "kiwi-ng").environment()
        with_shim = subprocess.run(bootstrap, capture_output=True, text=True, env=env)
    assert without_shim.returncode != 0 and "lock" in without_shim.stderr  # the defect, as it was
    assert with_shim.returncode == 0, with_shim.stderr
    assert (tmp_path / "t" / "build/image-root/var/lib/dpkg/lock-frontend").exists()


def test_only_the_credentials_files_kiwi_writes_for_this_build_are_removed(tmp_path):
    cache = tmp_path / "cache"
    zypper, apt = cache / "zypper" / "credentials", cache / "apt-get" / "auth.conf.d"
    apt.mkdir(parents=True)
    (apt / "trixie.conf").write_text("machine m login u password p\n")
    (apt / "someone-else.conf").write_text("machine other login u password p\n")
    kiwi.seal_repository_credentials(cache, ["trixie", "trixie-security"])
    assert zypper.stat().st_mode & 0o777 == 0o700
    (zypper / "kiwiRepoCredentials").write_text("username=u\npassword=p\n")
    (zypper / "SCCcredentials").write_text("username=u\npassword=p\n")

    kiwi.remove_repository_credentials(cache, ["trixie", "trixie-security"])

    assert sorted(p.name for p in (*zypper.iterdir(), *apt.iterdir())) == [
        "SCCcredentials", "someone-else.conf"]


def test_credentials_behind_a_link_out_of_the_cache_are_left_alone(tmp_path):
    """A --cache-dir whose zypper directory links elsewhere: the file there is not the cache's."""
    elsewhere, cache = tmp_path / "elsewhere", tmp_path / "cache"
    (elsewhere / "credentials").mkdir(parents=True)
    (elsewhere / "credentials" / "kiwiRepoCredentials").write_text("the user's\n")
    cache.mkdir()
    (cache / "zypper").symlink_to(elsewhere)

    kiwi.remove_repository_credentials(cache, ["trixie"])

    assert (elsewhere / "credentials" / "kiwiRepoCredentials").read_text() == "the user's\n"
