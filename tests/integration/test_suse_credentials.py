"""Repository credentials with the real kiwi-ng, as root, against the loopback repository server.

This host has no rpm or zypper, so a SUSE image cannot be built here.  Stand-ins for rpm, rpmdb
and zypper (first on PATH) let the real KIWI run its zypper repository setup — the step that
handles the credentials — up to `zypper addrepo`, which fails; the seam is the build-host check
(a HostFacts that takes this host for a SUSE 15 one).  Afterwards no file under the package
cache, the failed build's directory or beside --out holds the password.
"""

from pathlib import Path

import pytest

from imagebuilder.build import pipeline
from imagebuilder.core.errors import BuildError
from imagebuilder.distros.targets import get_target
from imagebuilder.host.facts import HostFacts

pytestmark = pytest.mark.integration

PASSWORD = "loopback-s3cret-of-the-rmt"
ZYPPER = """#!/bin/sh
# Stand-in zypper: says what KIWI gave it (whether the repository URL carries the login, which
# files its credentials directory holds: names only), then fails as an unreachable RMT would.
for word in "$@"; do
    case $word in *@127.0.0.1*) echo "login in URL" >> "$WITNESS" ;; esac
done
while [ $# -gt 0 ]; do [ "$1" = "--reposd-dir" ] && reposd=$2; shift; done
ls -A "$(dirname "$reposd")/credentials" >> "$WITNESS"
exit 1
"""
RPM = """#!/bin/sh
case "$*" in *_dbpath*) echo /usr/lib/sysimage/rpm ;; esac
"""


class SuseHost(HostFacts):
    def build_host_problem(self, target):
        return None


@pytest.fixture
def rmt(repo_server):
    """An RMT on loopback: the shared repository server answers every request below /ok/."""
    return f"{repo_server}/ok/repo"


def test_no_password_is_left_on_the_build_host(rmt, tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, text in (("zypper", ZYPPER), ("rpm", RPM), ("rpmdb", RPM)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    witness = tmp_path / "witness"
    monkeypatch.setenv("PATH", f"{tools}:{Path('/usr/sbin')}:{Path('/usr/bin')}:/sbin:/bin")
    monkeypatch.setenv("WITNESS", str(witness))
    monkeypatch.setenv("TDX_IMAGE_REPO_USER", "rmt-user")
    monkeypatch.setenv("TDX_IMAGE_REPO_PASSWORD", PASSWORD)
    work = tmp_path / "work"
    work.mkdir()
    request = pipeline.BuildRequest(target=get_target("sles", "15-SP5"), out_dir=work / "sles",
                                    mirror=rmt, cache_dir=work / "cache", incremental=False)

    with pytest.raises(BuildError, match="KiwiCommandError: zypper"):
        pipeline.build(request, lambda event: None, SuseHost())

    # KIWI got as far as adding the repository, with the login in its URL (system_build.py
    # _get_repo_parameters); with --add-repo-credentials it writes no kiwiRepoCredentials file.
    seen = witness.read_text().splitlines()
    assert "login in URL" in seen and set(seen) == {"login in URL"}
    leftovers = [path for path in work.rglob("*") if path.is_file()
                 and PASSWORD.encode() in path.read_bytes()]
    assert leftovers == []
    assert sorted(path.name for path in work.iterdir()) == ["cache", "sles.failed"]
    assert (work / "cache" / "zypper" / "credentials").stat().st_mode & 0o777 == 0o700
