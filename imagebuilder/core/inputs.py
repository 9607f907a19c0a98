"""Files users name on the command line: read only regular files (a FIFO would hang the read,
/dev/zero never ends), say exactly what is wrong with the others, and check the places reports
are written to before the work that produces them starts."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import click

from .errors import InputError, TdxImageError

KINDS = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a FIFO (named pipe)"),
         (stat.S_ISCHR, "is a character device"), (stat.S_ISBLK, "is a block device"),
         (stat.S_ISSOCK, "is a socket"))


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` is not a readable regular file, or None when it is one."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a parent is a file)"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    for test, why in KINDS:
        if test(mode):
            return why
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return None


def require_regular_file(path: Path, what: str, error: type[TdxImageError] = InputError) -> None:
    problem = not_a_regular_file(path)
    if problem:
        raise error(f"{what} {path} {problem}",
                    "" if problem.startswith("does not exist") else "give a regular file")


def read_bytes(path: Path, what: str, max_bytes: int,
               error: type[TdxImageError] = InputError) -> bytes:
    """The content of a regular file of at most ``max_bytes``, or ``error`` saying what is wrong."""
    require_regular_file(path, what, error)
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{what} {path} is {size} bytes, more than the {max_bytes} expected",
                    "is it the right file?")
    try:
        with open(path, "rb") as stream:
            return stream.read(max_bytes + 1)
    except OSError as problem:
        raise error(f"cannot read {what} {path}: {problem.strerror}")


def read_text(path: Path, what: str, max_bytes: int,
              error: type[TdxImageError] = InputError) -> str:
    """The UTF-8 text of a small regular file, or ``error`` saying what is wrong with it."""
    try:
        return read_bytes(path, what, max_bytes, error).decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not text (not UTF-8)", "is it the right file?")


def require_writable_file(path: Path, what: str) -> None:
    """``path`` can be created or overwritten: checked before the work whose report it holds."""
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory", "give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{what} {path}: directory {parent} does not exist",
                         "create it first, or give another path")
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise InputError(f"{what} {path} is not writable (permission denied or read-only)")


def require_writable_dir(directory: Path, what: str) -> None:
    """``directory`` exists or can be created, and can be written (not read-only, immutable,
    or below a file)."""
    probe = directory
    while not os.path.lexists(probe):
        probe = probe.parent
    if not os.path.isdir(probe):
        raise InputError(f"{what}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{what}: {probe} is not writable (read-only, immutable or "
                         "permission denied)")


def write_text(path: Path, text: str, what: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise InputError(f"cannot write {what} {path}: {error.strerror}")


class Seconds(click.ParamType):
    """A finite number of seconds, at least ``minimum`` (click's FloatRange lets nan through)."""

    name = "seconds"

    def __init__(self, minimum: float):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < self.minimum:
            self.fail(f"{value!r} is not a finite number of seconds >= {self.minimum:g}", param, ctx)
        return seconds
