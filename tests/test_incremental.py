"""Incremental builds: what the prepared root's key covers, and that a stale root is never reused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagebuilder.build import incremental, kiwi
from imagebuilder.build.compose import compose
from imagebuilder.build.staging import Staging
from imagebuilder.core.errors import HostError
from imagebuilder.distros.repos import Repository
from imagebuilder.distros.targets import get_target
from imagebuilder.core.paths import SHARED_OVERLAY

DEBIAN = get_target("debian").description_dir


@pytest.fixture
def apt_repo(tmp_path) -> Repository:
    """A file:// apt repository whose InRelease the key digests."""
    (tmp_path / "mirror/dists/bookworm").mkdir(parents=True)
    (tmp_path / "mirror/dists/bookworm/InRelease").write_text("Date: Sat, 28 Nov 2026 08:00:00 UTC\n")
    return Repository(alias="bookworm", url=f"file://{tmp_path}/mirror", type="apt-deb",
                      distribution="bookworm", components="main")


def _description(tmp_path: Path, name: str, edit=None) -> Path:
    """The debian target's real composed description, optionally edited."""
    source = tmp_path / f"{name}-source"
    shutil.copytree(DEBIAN, source)
    if edit:
        edit(source)
    return compose(source, SHARED_OVERLAY, tmp_path / name).path


def _run(tmp_path: Path, repo: Repository, description: Path) -> kiwi.KiwiInvocation:
    return kiwi.KiwiInvocation(kiwi="kiwi-ng", description=description, target_dir=tmp_path / "staging/kiwi",
                        cache_dir=tmp_path / "cache", repositories=[repo])


def _key(tmp_path: Path, repo: Repository, description: Path, kiwi_version: str = "11.1.6") -> str:
    run = _run(tmp_path, repo, description)
    return incremental.root_key(description, "debian", run, kiwi_version,
                                incremental.metadata_digests([repo], None))


def _replace_in(name: str, old: str, new: str):
    def edit(description: Path) -> None:
        text = (description / name).read_text()
        assert old in text
        (description / name).write_text(text.replace(old, new))
    return edit


LATER_CHANGES = {
    "overlay file added": lambda d: (d / "root/etc/tdx-extra").write_text("x\n"),
    "config.sh changed": lambda d: (d / "config.sh").write_text((d / "config.sh").read_text() + "true\n"),
    "kernel command line changed": _replace_in("config.xml", 'kernelcmdline="console=ttyS0,115200"',
                                               'kernelcmdline="console=ttyS0,115200 quiet"'),
    "grub timeout changed": _replace_in("config.xml", 'timeout="0"', 'timeout="3"'),
}

PACKAGE_CHANGES = {
    "package added": _replace_in("config.xml", '<package name="zstd"/>', '<package name="zstd"/><package name="less"/>'),
    "package removed": _replace_in("config.xml", '<package name="dbus"/>', ""),
    "bootstrap package added": _replace_in("config.xml", '<package name="usrmerge"/>',
                                           '<package name="usrmerge"/><package name="less"/>'),
    "post_bootstrap.sh changed": lambda d: (d / "post_bootstrap.sh").write_text(
        (d / "post_bootstrap.sh").read_text() + "true\n"),
}


def test_the_package_step_creates_no_users(tmp_path):
    # The key does not cover <users>: a root prepared for one build's users must not carry
    # them into another build's image.
    source = tmp_path / "source"
    shutil.copytree(DEBIAN, source)
    config = source / "config.xml"
    config.write_text(config.read_text().replace(
        "</image>", '<users><user name="tester" home="/home/tester" password="*"/></users></image>'))
    incremental._reduced_description(source, tmp_path / "reduced")
    reduced = (tmp_path / "reduced" / "config.xml").read_text()
    assert "<users" not in reduced and "<packages" in reduced


@pytest.mark.parametrize("edit", LATER_CHANGES.values(), ids=LATER_CHANGES)
def test_changes_applied_after_package_install_keep_the_key(tmp_path, apt_repo, edit):
    assert _key(tmp_path, apt_repo, _description(tmp_path, "a")) == \
        _key(tmp_path, apt_repo, _description(tmp_path, "b", edit))


@pytest.mark.parametrize("edit", PACKAGE_CHANGES.values(), ids=PACKAGE_CHANGES)
def test_package_changes_change_the_key(tmp_path, apt_repo, edit):
    assert _key(tmp_path, apt_repo, _description(tmp_path, "a")) != \
        _key(tmp_path, apt_repo, _description(tmp_path, "b", edit))


def test_repository_metadata_kiwi_and_repositories_change_the_key(tmp_path, apt_repo):
    description = _description(tmp_path, "a")
    before = _key(tmp_path, apt_repo, description)
    assert _key(tmp_path, apt_repo, description, kiwi_version="11.1.7") != before
    other_suite = Repository(alias="bookworm", url=apt_repo.url, type="apt-deb", distribution="bookworm",
                             components="main contrib")
    assert _key(tmp_path, other_suite, description) != before
    (Path(apt_repo.url.removeprefix("file://")) / "dists/bookworm/InRelease").write_text("Date: later\n")
    assert _key(tmp_path, apt_repo, description) != before


def _fake_prepare(calls: list):
    """Stands in for `kiwi-ng system prepare` (minutes, root): makes the root it was asked for."""
    def run(build: kiwi.KiwiInvocation, log: Path, on_phase, secrets=()) -> float:
        calls.append(build)
        (build.prepare_root / "etc").mkdir(parents=True)
        (build.prepare_root / "etc/packages").write_text(
            (build.description / "config.xml").read_text())
        (build.prepare_root / "var/lib/dpkg").mkdir(parents=True)
        (build.prepare_root / "var/lib/dpkg/status").write_text("Package: dbus\nStatus: install ok installed\n")
        (build.prepare_root / "var/lib/dpkg/status.kiwi").touch()  # as KIWI's apt bootstrap leaves it
        return 0.0
    return run


def _prepare(tmp_path: Path, repo: Repository, description: Path, enabled: bool = True) -> incremental.Decision:
    staging = Staging(tmp_path / f"staging-{len(list(tmp_path.glob('staging-*')))}")
    shutil.copytree(description, staging.description)
    staging.publish.mkdir()
    run = kiwi.KiwiInvocation(kiwi="kiwi-ng", description=staging.description,
                              target_dir=staging.kiwi_target, cache_dir=tmp_path / "cache",
                              repositories=[repo])
    return incremental.prepare(run, staging, "debian", None, "11.1.6", enabled, lambda phase: None, [])


def test_a_changed_package_list_never_reuses_the_cached_root(tmp_path, apt_repo, monkeypatch):
    calls: list[kiwi.KiwiInvocation] = []
    monkeypatch.setattr(kiwi, "execute", _fake_prepare(calls))
    first = _prepare(tmp_path, apt_repo, _description(tmp_path, "a"))
    assert not first.incremental and "prepared one and cached it" in first.reason
    command = calls[0].command()
    assert command[command.index("system") + 1] == "prepare" and "--root" in command
    reduced = calls[0].description
    assert not (reduced / "root").exists() and not (reduced / "config.sh").exists()
    image_root = first.invocation.target_dir / "build/image-root"
    assert (image_root / "etc/packages").is_file()
    assert first.invocation.allow_existing_root and "--allow-existing-root" in first.invocation.command()
    assert '<packages type="bootstrap">' not in (first.invocation.description / "config.xml").read_text()
    assert (first.invocation.description / "root/usr/lib/tdx-image/overlay-manifest.json").is_file()

    overlay_only = _prepare(tmp_path, apt_repo, _description(tmp_path, "b", LATER_CHANGES["overlay file added"]))
    assert overlay_only.incremental and overlay_only.key == first.key and len(calls) == 1
    dpkg = overlay_only.invocation.target_dir / "build/image-root/var/lib/dpkg"
    assert (dpkg / "status.kiwi").read_text() == (dpkg / "status").read_text(), "KIWI's apt would reinstall all"

    more_packages = _prepare(tmp_path, apt_repo, _description(tmp_path, "c", PACKAGE_CHANGES["package added"]))
    assert not more_packages.incremental and more_packages.key != first.key and len(calls) == 2
    assert "less" in (more_packages.invocation.target_dir / "build/image-root/etc/packages").read_text()

    forced = _prepare(tmp_path, apt_repo, _description(tmp_path, "d"), enabled=False)
    assert not forced.incremental and "--no-incremental" in forced.reason
    assert not forced.invocation.allow_existing_root and len(calls) == 2


def test_an_interrupted_copy_leaves_no_root_that_looks_valid(tmp_path, monkeypatch):
    cache = incremental.RootCache(tmp_path / "cache")
    source = tmp_path / "root"
    (source / "etc").mkdir(parents=True)
    real_copy = incremental._copy_tree

    def copy_then_fail(src, dst):
        real_copy(src, dst)
        raise HostError("disk full")

    monkeypatch.setattr(incremental, "_copy_tree", copy_then_fail)
    with cache.locked(), pytest.raises(HostError):
        cache.store("k" * 64, source)
    assert cache.lookup("k" * 64) is None
    assert [path.name for path in cache.directory.iterdir()] == [".lock"]


def test_cache_keeps_the_most_recently_used_roots(tmp_path):
    cache = incremental.RootCache(tmp_path / "cache")
    source = tmp_path / "root"
    source.mkdir()
    with cache.locked():
        for key in ("a" * 64, "b" * 64, "c" * 64):
            cache.store(key, source)
    assert cache.lookup("a" * 64) is None
    assert cache.lookup("b" * 64) and cache.lookup("c" * 64)
    assert len([path for path in cache.directory.iterdir() if not path.name.startswith(".")]) == incremental.KEEP_ROOTS


def test_the_cache_removes_only_what_it_named(tmp_path):
    """--cache-dir may name a directory whose prepared-roots/ holds a user's own files."""
    cache = incremental.RootCache(tmp_path / "cache")
    theirs = [cache.directory / "my-root", cache.directory / ".tmp-notes"]
    for path in theirs:
        path.mkdir(parents=True)
    source = tmp_path / "root"
    source.mkdir()
    with cache.locked():
        for key in ("a" * 64, "b" * 64, "c" * 64):
            cache.store(key, source)
    assert all(path.is_dir() for path in theirs)
    assert cache.lookup("a" * 64) is None and cache.lookup("c" * 64)

