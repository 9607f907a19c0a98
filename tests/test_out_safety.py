"""--out safety: a build never deletes what tdx-image did not write; the swap is atomic.

The two data losses of issue 7 are reproduced with the real command line: the refusal comes
before anything is built, so these run without root in the fast suite.
"""

import json
import os
from pathlib import Path

import pytest

from imagebuilder.build import outdir, publish
from imagebuilder.core.errors import InputError
from imagebuilder.core.paths import DESCRIPTIONS_DIR, OVERLAYS_DIR, PROJECT_ROOT
from tests.conftest import error_line, run_cli, users_directory


def earlier_output(path: Path, extra: dict | None = None) -> Path:
    """What a build publishes, as far as the ownership check reads it."""
    (path / "description").mkdir(parents=True)
    (path / "img.qcow2").write_text("disk")
    record = {"tdx_image_version": "0.1.0", "target": {"name": "debian"}, "image": "img.qcow2",
              "artifacts": {"img.qcow2": {"sha256": "0", "bytes": 4}}, **(extra or {})}
    (path / "build.json").write_text(json.dumps(record))
    return path


def test_data_loss_1_an_existing_directory_with_a_users_files_is_refused(tmp_path):
    thesis = users_directory(tmp_path / "X")
    result = run_cli("build", "debian", "--out", tmp_path / "X")
    assert result.returncode == 2, result.stderr
    assert "holds files tdx-image did not write (notes)" in error_line(result)
    assert thesis.read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X"]  # nothing staged beside it


@pytest.mark.parametrize("out", ["", "."])  # "..", "./" and more: tests/test_bad_input.py
@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_data_loss_2_an_empty_out_or_the_current_directory_is_refused_even_with_force(
        tmp_path, out, force):
    cwd = tmp_path / "project" / "checkout"
    thesis = users_directory(cwd)
    result = run_cli("build", "debian", "--out", out, *(["--force"] if force else []), cwd=cwd,
                     env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    assert result.returncode == 2, result.stderr
    assert "is or contains the current directory" in error_line(result)
    assert thesis.read_text() == "x\n"
    assert sorted(p.name for p in cwd.iterdir()) == ["notes"]


@pytest.mark.parametrize("place", [
    Path("/"), Path("/tmp"), Path.home(), PROJECT_ROOT, PROJECT_ROOT / "imagebuilder",
    PROJECT_ROOT / "tests", PROJECT_ROOT.parent, DESCRIPTIONS_DIR / "debian" / "out",
    OVERLAYS_DIR / "tdx" / "root" / "x",
], ids=lambda p: str(p))
def test_protected_places_are_refused_even_with_force(place):
    with pytest.raises(InputError, match="--out"):
        outdir.check(place, force=True)


def test_the_package_cache_and_what_contains_it_are_refused(tmp_path):
    cache = tmp_path / "cache" / "tdx"
    for out in (cache, cache.parent):
        with pytest.raises(InputError, match="contains"):
            outdir.check(out, force=True, cache_dir=cache)


def test_absent_empty_and_earlier_outputs_may_be_replaced(tmp_path):
    assert outdir.check(tmp_path / "absent", force=False) == tmp_path / "absent"
    (tmp_path / "empty").mkdir()
    outdir.check(tmp_path / "empty", force=False)
    outdir.check(earlier_output(tmp_path / "earlier"), force=False)


def test_an_earlier_output_with_a_users_file_added_is_refused(tmp_path):
    out = earlier_output(tmp_path / "out")
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"did not write \(my-notes.txt\)"):
        outdir.check(out, force=False)
    outdir.check(out, force=True)


@pytest.mark.parametrize("record", [
    "not json", json.dumps({"image": "x"}), json.dumps(["tdx_image_version"]),
], ids=["not json", "foreign fields", "not an object"])
def test_a_build_json_without_our_fields_is_not_ours(tmp_path, record):
    out = tmp_path / "out"
    out.mkdir()
    (out / "build.json").write_text(record)
    with pytest.raises(InputError, match="did not write"):
        outdir.check(out, force=False)


def test_a_file_at_out_or_out_failed_is_refused(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(InputError, match="exists and is not a directory"):
        outdir.check(tmp_path / "file", force=False)
    (tmp_path / "d.failed").write_text("mine")
    with pytest.raises(InputError, match="the failure directory .* not a directory"):
        outdir.check(tmp_path / "d", force=False)


def test_a_foreign_out_failed_is_refused_an_earlier_one_accepted(tmp_path):
    failed = tmp_path / "d.failed"
    failed.mkdir()
    (failed / "build.log").write_text("log")
    with pytest.raises(InputError, match="failure directory"):
        outdir.check(tmp_path / "d", force=False)
    (failed / "failure.json").write_text(json.dumps(
        {"tdx_image_version": "0.1.0", "error": "x", "exit_code": 6, "files": ["build.log"]}))
    outdir.check(tmp_path / "d", force=False)


def test_the_swap_exchanges_atomically_and_removes_the_previous_set(tmp_path):
    out = earlier_output(tmp_path / "out")
    inode = out.stat().st_ino
    new = tmp_path / "staging" / "publish"
    new.mkdir(parents=True)
    (new / "new.qcow2").write_text("new")
    publish.replace_directory(new, out)
    assert [p.name for p in out.iterdir()] == ["new.qcow2"]
    assert out.stat().st_ino != inode and not new.exists()


def test_the_swap_creates_an_absent_destination_and_falls_back_without_renameat2(
        tmp_path, monkeypatch):
    new = tmp_path / "new"
    new.mkdir()
    publish.replace_directory(new, tmp_path / "out")
    assert (tmp_path / "out").is_dir() and not new.exists()

    def unsupported(source, target, flags):
        raise publish._Unsupported

    monkeypatch.setattr(publish, "_renameat2", unsupported)
    new.mkdir()
    (new / "second").write_text("2")
    publish.replace_directory(new, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def staged_build(tmp_path, monkeypatch, failure=None, during=lambda: None):
    """pipeline._stage_and_publish with the KIWI-to-validation part replaced by writing a log
    (and failing with ``failure`` when given), the way a real build leaves it."""
    from imagebuilder.build import pipeline
    from imagebuilder.distros.targets import TARGETS

    def fake_build_in(staging):
        publish_dir = staging.publish
        (publish_dir / "build.log").write_text("kiwi said things\n")
        (publish_dir / "img.qcow2").write_text("disk")
        during()
        if failure:
            raise failure("KiwiError: it broke", f"full log: {publish_dir / 'build.log'}")
        return {"durations_s": {}, "tdx_image_version": "0.1.0", "target": {}, "image": "img.qcow2",
                "artifacts": {"img.qcow2": {}, "build.log": {}}}

    request = pipeline.BuildRequest(target=TARGETS["debian"], out_dir=tmp_path / "out",
                                 cache_dir=tmp_path / "cache")
    return pipeline._stage_and_publish(request, tmp_path / "out", fake_build_in)


def test_a_failed_build_names_its_log_where_it_is_kept(tmp_path, monkeypatch):
    from imagebuilder.core.errors import BuildError

    with pytest.raises(BuildError) as raised:
        staged_build(tmp_path, monkeypatch, failure=BuildError)
    failed = tmp_path / "out.failed"
    assert raised.value.hint == f"full log: {failed / 'build.log'}"  # issue 7, defect 9
    assert (failed / "build.log").read_text() == "kiwi said things\n"
    record = json.loads((failed / "failure.json").read_text())
    assert record["exit_code"] == 6 and record["files"] == ["build.log"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.failed"]  # no image, no staging
    # the next failure replaces this OUT.failed: it is ours
    with pytest.raises(BuildError):
        staged_build(tmp_path, monkeypatch, failure=BuildError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.failed"]


def test_a_foreign_out_failed_appearing_during_the_build_is_kept(tmp_path, monkeypatch):
    from imagebuilder.core.errors import BuildError

    def someone_writes_there():
        users_directory(tmp_path / "out.failed")

    with pytest.raises(BuildError) as raised:
        staged_build(tmp_path, monkeypatch, failure=BuildError, during=someone_writes_there)
    assert (tmp_path / "out.failed" / "notes" / "thesis.txt").read_text() == "x\n"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.failed-")]
    assert len(kept) == 1 and (kept[0] / "build.log").is_file()
    assert str(kept[0]) in raised.value.hint


def test_files_put_into_out_during_the_build_stop_the_publish(tmp_path, monkeypatch):
    def someone_writes_there():
        users_directory(tmp_path / "out")

    with pytest.raises(InputError, match="did not write"):
        staged_build(tmp_path, monkeypatch, during=someone_writes_there)
    assert (tmp_path / "out" / "notes" / "thesis.txt").read_text() == "x\n"


def test_a_build_publishes_over_an_earlier_one(tmp_path, monkeypatch):
    for _ in range(2):
        record = staged_build(tmp_path, monkeypatch)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["build.json", "build.log",
                                                                     "img.qcow2"]
    assert record["image"] == "img.qcow2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
