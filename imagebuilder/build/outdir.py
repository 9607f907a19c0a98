"""What a build may replace: ``--out`` and ``OUT.failed`` are only ever swapped out when they are
absent, empty or an earlier tdx-image output; anything else is the user's and is refused (exit 2)
before anything is built, unless ``--force``.  Some places are refused even with ``--force``: the
current directory (which an empty ``--out`` means), ``/`` and the directories right below it,
``$HOME``, this project's own directories, the package cache, and everything that contains one
of them; nor may an output lie inside the project's sources (KIWI descriptions, overlays, code).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import InputError
from ..core.paths import DESCRIPTIONS_DIR, IS_CHECKOUT, OVERLAYS_DIR, PACKAGE_DIR, PROJECT_ROOT
from .staging import BUILD_RECORD, FAILURE_RECORD, PUBLISHED_DESCRIPTION

# A published build: build.json with these fields, and nothing but the artifacts it lists.
BUILD_RECORD_FIELDS = {"tdx_image_version", "target", "artifacts", "image"}
# A failed build's OUT.failed/: failure.json with these fields, and the files it lists.
FAILURE_RECORD_FIELDS = {"tdx_image_version", "error", "exit_code", "files"}
# Nothing may be written below these (an output inside a description is copied into itself).
# An installed wheel has no checkout around it: then the package is all there is to protect.
SOURCE_DIRS = (DESCRIPTIONS_DIR, OVERLAYS_DIR, PACKAGE_DIR,
               *((PROJECT_ROOT / ".git", PROJECT_ROOT / ".venv") if IS_CHECKOUT else ()))
SAFE_EXAMPLE = PROJECT_ROOT / "out" if IS_CHECKOUT else Path.home() / "tdx-image-out"
CHECKOUT_DIRS = (PROJECT_ROOT, PROJECT_ROOT / "tests", PROJECT_ROOT / "benchmarks") if IS_CHECKOUT else ()


def failed_dir(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}.failed"


def _record(path: Path, fields: set[str]) -> dict | None:
    try:
        if not path.is_file() or path.stat().st_size > 2**24:
            return None
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and fields <= record.keys() else None


def foreign_entries(directory: Path) -> list[str]:
    """Entries of an existing directory that no earlier tdx-image run wrote ([] when empty or
    an earlier output); a directory without our record is foreign as a whole."""
    entries = sorted(path.name for path in directory.iterdir())
    if not entries:
        return []
    build = _record(directory / BUILD_RECORD, BUILD_RECORD_FIELDS)
    if build is not None and isinstance(build["artifacts"], dict):
        ours = set(build["artifacts"]) | {BUILD_RECORD, PUBLISHED_DESCRIPTION}
        return [name for name in entries if name not in ours]
    failure = _record(directory / FAILURE_RECORD, FAILURE_RECORD_FIELDS)
    if failure is not None and isinstance(failure["files"], list):
        ours = set(failure["files"]) | {FAILURE_RECORD}
        return [name for name in entries
                if name not in ours or not (directory / name).is_file()]
    return entries


def _protected() -> list[Path]:
    home = os.environ.get("HOME")
    places = [Path.cwd(), *CHECKOUT_DIRS, *SOURCE_DIRS]
    if home:
        places.append(Path(home))
    return [place.resolve() for place in places]


def refuse_protected(path: Path, option: str, extra: tuple[Path, ...] = ()) -> None:
    """Refuse (even with --force) a place whose replacement would destroy more than a build."""
    if len(path.parts) <= 2:
        raise InputError(f"{option} {path} is / or a directory right below it",
                         f"{option} must be a directory of its own, e.g. {path}/tdx-image")
    for place in [*_protected(), *(p.resolve() for p in extra)]:
        if path == place or place.is_relative_to(path):
            what = "the current directory" if place == Path.cwd().resolve() else str(place)
            raise InputError(f"{option} {path} is or contains {what}",
                             f"{option} must be a directory of its own, e.g. {path}/tdx-image")
    for source in SOURCE_DIRS:
        if path.is_relative_to(source.resolve()):
            raise InputError(f"{option} {path} lies inside this project's {source.name}/",
                             f"choose a directory outside it, e.g. {SAFE_EXAMPLE}")


def replaceable(path: Path) -> bool:
    """Absent, or a directory holding nothing but an earlier tdx-image output (or nothing)."""
    if not os.path.lexists(path):  # or invisible to us: a user without root is told so next
        return True
    return os.path.isdir(path) and not os.path.islink(path) and not foreign_entries(path)


def _refuse_foreign(path: Path, option: str) -> None:
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise InputError(f"{option} {path} exists and is not a directory",
                         "choose another --out, or pass --force to replace it")
    try:
        foreign = foreign_entries(path)
    except OSError as error:
        raise InputError(f"cannot read {option} {path}: {error.strerror}")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"{option} {path} holds files tdx-image did not write ({shown})",
                         "choose another --out, or pass --force to replace the directory")


def check(out_dir: Path, force: bool, cache_dir: Path | None = None) -> Path:
    """The resolved ``--out``, once it and ``OUT.failed`` are safe to replace; else InputError.
    (Whether it can be written is checked after the root check: root writes where users cannot.)"""
    out = Path(os.path.abspath(out_dir)).resolve()
    extra = (cache_dir,) if cache_dir else ()
    refuse_protected(out, "--out", extra)
    failed = failed_dir(out)
    refuse_protected(failed, "--out's failure directory", extra)
    if not force:
        _refuse_foreign(out, "--out")
        _refuse_foreign(failed, "the failure directory")
    return out
