"""Repositories: host apt sources, KIWI's --add-repo format, credentials, reachability."""

import pytest

from imagebuilder.core.errors import CredentialsError, InputError, RepositoryError
from imagebuilder.distros.repos import Credentials, Repository, check_reachable, host_debian_mirrors, load_credentials, parse_repo_option


def test_host_mirrors_from_deb822_and_one_line_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n")
    one_line = tmp_path / "extra.list"
    one_line.write_text("deb [signed-by=/k.gpg] http://other.example/debian trixie main\n"
                        "# deb http://commented.example/debian sid main\n")
    assert host_debian_mirrors([str(deb822), str(one_line)]) == {
        "bookworm": "http://mirror.example/debian",
        "bookworm-updates": "http://mirror.example/debian",
        "bookworm-security": "http://mirror.example/debian-security",
        "trixie": "http://other.example/debian",
    }


def test_kiwi_add_repo_value_keeps_field_order_and_checks_signatures():
    repo = Repository(alias="sec", url="http://m.example/debian-security", type="apt-deb",
                      distribution="bookworm-security", components="main",
                      signing_keys=("/usr/share/keyrings/k.gpg",))
    assert repo.kiwi_add_repo() == (
        "http://m.example/debian-security,apt-deb,sec,,false,true,"
        "{file:///usr/share/keyrings/k.gpg},main,bookworm-security,true,")
    assert repo.probe_url() == "http://m.example/debian-security/dists/bookworm-security/InRelease"


def test_repo_option_forms():
    rpm = parse_repo_option("https://download.opensuse.org/repositories/devel:/coco:/Leap15.5/15.5/")
    assert (rpm.type, rpm.probe_url().endswith("/15.5/repodata/repomd.xml")) == ("rpm-md", True)
    apt = parse_repo_option("http://m.example/debian,bookworm-backports")
    assert (apt.type, apt.distribution, apt.components) == ("apt-deb", "bookworm-backports", "main")
    with pytest.raises(InputError):
        parse_repo_option("not-a-url")


def test_credentials_from_file_env_and_errors(tmp_path):
    good = tmp_path / "SCCcredentials"
    good.write_text("username=SCC_abc\npassword=s3cret\n")
    good.chmod(0o600)
    assert load_credentials(str(good), environ={}) == Credentials("SCC_abc", "s3cret")
    assert load_credentials(None, environ={"TDX_IMAGE_REPO_USER": "u",
                                           "TDX_IMAGE_REPO_PASSWORD": "p"}) == Credentials("u", "p")
    assert load_credentials(None, environ={}) is None
    assert set(Credentials("u", "p@ss/word").secrets()) == {"p@ss/word", "p%40ss%2Fword",
                                                             "u:p@ss/word"}
    half = tmp_path / "half"
    half.write_text("username=only\n")
    half.chmod(0o600)
    with pytest.raises(CredentialsError, match="lacks"):
        load_credentials(str(half), environ={})
    with pytest.raises(CredentialsError, match="does not exist"):
        load_credentials(str(tmp_path / "missing"), environ={})


def test_reachability_names_the_failing_repository(repo_server):
    ok = Repository("good", f"{repo_server}/ok/", "rpm-md")
    missing = Repository("gone", f"{repo_server}/missing/", "rpm-md")
    check_reachable([ok], None)
    with pytest.raises(RepositoryError, match="gone answered HTTP 404"):
        check_reachable([ok, missing], None)
    with pytest.raises(RepositoryError, match="unreachable"):
        check_reachable([Repository("closed", "http://127.0.0.1:9/", "rpm-md")], None, timeout=5)


def test_refused_credentials_are_a_credentials_error(repo_server):
    repo = Repository("sles", f"{repo_server}/auth/", "rpm-md", authenticated=True)
    check_reachable([repo], Credentials("u", "right"))
    with pytest.raises(CredentialsError, match="refused"):
        check_reachable([repo], Credentials("u", "wrong"))
