"""tests/fetch-reference-packages.sh never overwrites a directory it did not make (the refusal
comes before any download, so these run without a mirror)."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parent / "fetch-reference-packages.sh"


def test_a_directory_of_someone_elses_is_refused_untouched(tmp_path):
    (tmp_path / "trixie").mkdir()
    (tmp_path / "notes.txt").write_text("mine")

    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True)

    assert result.returncode == 2
    assert "did not write" in result.stderr and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "trixie"]


def test_a_file_in_place_of_the_directory_is_refused(tmp_path):
    target = tmp_path / "packages"
    target.write_text("not a directory")

    result = subprocess.run(["bash", str(SCRIPT), str(target)], capture_output=True, text=True)

    assert result.returncode == 2 and target.read_text() == "not a directory"
