"""Files users name on the command line: one check of every path option (control characters,
names longer than the system allows, symlink loops, kernel file systems), read only regular
files and only so much of them (a FIFO would hang the read, /dev/zero never ends), JSON only so
deep, say exactly what is wrong with the others, and check the places reports are written to
before the work that produces them starts."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import click

from .errors import InputError, TdxImageError

NAME_MAX, PATH_MAX = 255, 4096  # bytes (Linux)
# Kernel file systems: no build output, cache or report belongs there.
KERNEL_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))
# Python's json parser recurses per level: 200k nested brackets are a RecursionError.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]")

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


def check_path(value: str | os.PathLike, option: str, directory: bool = False) -> Path:
    """The one check every path option gets before it is used: no control characters (a newline
    would forge an ``error:`` line), no name longer than the system allows, no symlink loop, and
    for a directory option, nothing below /proc, /sys or /dev."""
    text = os.fspath(value)
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise InputError(f"{option} {text!r} contains a control character",
                         "give a path without newlines, tabs or escape characters")
    encoded = os.fsencode(text)
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX or len(encoded) >= PATH_MAX:
        raise InputError(f"{option} {text[:40]}…: a name is longer than the system allows "
                         f"({NAME_MAX} bytes a name, {PATH_MAX} a path)", "give a shorter path")
    path = Path(text)
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputError(f"{option} {text} goes round a loop of symbolic links",
                             "fix the links, or give another path")
        if error.errno == errno.ENAMETOOLONG:
            raise InputError(f"{option} {text[:40]}…: longer than the system allows",
                             "give a shorter path")
    if directory:
        absolute = Path(os.path.realpath(path))
        for kernel in KERNEL_DIRS:
            if absolute.is_relative_to(kernel):
                raise InputError(f"{option} {text} lies in the kernel's {kernel} file system",
                                 "give a directory on a disk")
    return path


class UserPath(click.Path):
    """click.Path through check_path: the type of every path option of every verb."""

    def convert(self, value, param, ctx):
        if not isinstance(value, str | os.PathLike):
            self.fail(f"{value!r} is not a path", param, ctx)
        option = param.opts[0] if param is not None and param.opts else "path"
        check_path(value, option, directory=not self.file_okay)
        return super().convert(value, param, ctx)


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` of untrusted text, at most MAX_JSON_DEPTH levels deep (ValueError if not)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    depth = deepest = 0
    for bracket in _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(text)
