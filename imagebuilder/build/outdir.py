"""What a build may replace: ``--out`` and ``OUT.failed`` are only ever swapped out when they are
absent, empty or an earlier tdx-image output; anything else is the user's and is refused (exit 2)
before anything is built, unless ``--force``.  Some places are refused even with ``--force``: the
current directory (which an empty ``--out`` means), ``/`` and the directories right below it,
``$HOME``, this project's own directories, the package cache, and everything that contains one
of them; nor may an output lie inside the project's sources (KIWI descriptions, overlays, code).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from ..core.errors import InputError
from ..core.inputs import NAME_MAX, parse_json
from ..host.locks import LOCK_DIR
from ..core.paths import DESCRIPTIONS_DIR, IS_CHECKOUT, OVERLAYS_DIR, PACKAGE_DIR, PROJECT_ROOT
from .staging import BUILD_RECORD, FAILURE_RECORD, PUBLISHED_DESCRIPTION

DESCRIPTION_FILES = "description_files"  # build.json's list of what description/ holds
# The system's own directories: no output, failure directory or package cache goes inside one.
SYSTEM_DIRS = tuple(Path(name) for name in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64",
                                            "/libx32", "/proc", "/run", "/sbin", "/sys", "/usr"))
STAGING_SUFFIX = ".staging-"  # the build's work directory beside --out: .OUT.staging-XXXXXXXX
MAX_OUT_NAME = NAME_MAX - len(f".{STAGING_SUFFIX}XXXXXXXX")

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
        record = parse_json(path.read_text())
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
        # A published file is a regular file of the recorded name (a user's build.log/ directory
        # is not); description/ is ours only as far as build.json lists its files.
        files = set(build["artifacts"]) | {BUILD_RECORD}
        foreign = [name for name in entries if name != PUBLISHED_DESCRIPTION and (
            name not in files or not _regular(directory / name))]
        if PUBLISHED_DESCRIPTION in entries:
            foreign += _foreign_in_description(directory / PUBLISHED_DESCRIPTION,
                                               build.get(DESCRIPTION_FILES))
        return foreign
    failure = _record(directory / FAILURE_RECORD, FAILURE_RECORD_FIELDS)
    if failure is not None and isinstance(failure["files"], list):
        ours = set(failure["files"]) | {FAILURE_RECORD}
        return [name for name in entries
                if name not in ours or not (directory / name).is_file()]
    return entries


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _foreign_in_description(description: Path, listed) -> list[str]:
    """What of a published description/ its build.json does not list (all of it, for a record
    from before the listing)."""
    if description.is_symlink() or not description.is_dir():
        return [PUBLISHED_DESCRIPTION]
    ours = set(listed) if isinstance(listed, list) else set()
    return [f"{PUBLISHED_DESCRIPTION}/{name}" for name in description_files(description)
            if name not in ours]


def description_files(description: Path) -> list[str]:
    """Every entry below a published description/, as build.json lists them."""
    return sorted(str(path.relative_to(description)) for path in description.rglob("*"))


def _homes() -> list[Path]:
    """$HOME, and under sudo the invoking user's home too ($HOME is root's there)."""
    homes = [Path(os.environ["HOME"])] if os.environ.get("HOME") else []
    try:
        homes.append(Path(pwd.getpwnam(os.environ.get("SUDO_USER", "")).pw_dir))
    except KeyError:  # not under sudo, or a user the password database does not know
        pass
    return homes


def _protected() -> list[Path]:
    places = [Path.cwd(), *CHECKOUT_DIRS, *SOURCE_DIRS, *_homes(), LOCK_DIR]
    return [place.resolve() for place in places]


def refuse_system(path: Path, option: str) -> None:
    """Refuse ``/`` and everything in the system's own directories."""
    if path == Path("/"):
        raise InputError(f"{option} / is the whole system", f"e.g. {option} /var/tmp/tdx-image")
    for system in SYSTEM_DIRS:
        if path.is_relative_to(system):
            raise InputError(f"{option} {path} lies in the system directory {system}",
                             f"choose a directory of its own, e.g. {SAFE_EXAMPLE}")


def refuse_protected(path: Path, option: str, cache: Path | None = None) -> None:
    """Refuse (even with --force) a place whose replacement would destroy more than a build."""
    if len(path.parts) <= 2:
        raise InputError(f"{option} {path} is / or a directory right below it",
                         f"{option} must be a directory of its own, e.g. {path}/tdx-image")
    refuse_system(path, option)
    for place in [*_protected(), *([cache.resolve()] if cache else [])]:
        if path == place or place.is_relative_to(path):
            what = "the current directory" if place == Path.cwd().resolve() else str(place)
            raise InputError(f"{option} {path} is or contains {what}",
                             f"{option} must be a directory of its own, e.g. {path}/tdx-image")
    for inside, what in [*((source, f"this project's {source.name}/") for source in SOURCE_DIRS),
                         *(((cache, "the package cache"),) if cache else ()),
                         (LOCK_DIR, "tdx-image's lock directory")]:
        if path.is_relative_to(inside.resolve()):
            raise InputError(f"{option} {path} lies inside {what}",
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
    if cache_dir:
        refuse_system(cache_dir.resolve(), "--cache-dir")
    if len(os.fsencode(out.name)) > MAX_OUT_NAME:
        raise InputError(f"--out {out}: the name {out.name[:40]}… is too long",
                         f"at most {MAX_OUT_NAME} bytes: the build works beside it in "
                         f".NAME{STAGING_SUFFIX}XXXXXXXX")
    refuse_protected(out, "--out", cache_dir)
    failed = failed_dir(out)
    refuse_protected(failed, "--out's failure directory", cache_dir)
    if not force:
        _refuse_foreign(out, "--out")
        _refuse_foreign(failed, "the failure directory")
    return out
