"""Running the host tools the validator still calls: qemu-img (identify and check), lz4 (legacy initrds)."""

from __future__ import annotations

import os
import subprocess

from ..errors import HostError

TOOL_ENV = {**os.environ, "LC_ALL": "C"}

PACKAGE_OF_TOOL = {
    "qemu-img": "qemu-utils",
    "lz4": "lz4",
}


def run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run a tool, capture its output as bytes; the caller judges the exit status."""
    try:
        return subprocess.run(args, input=stdin, capture_output=True, env=TOOL_ENV, check=False)
    except FileNotFoundError:
        package = PACKAGE_OF_TOOL.get(args[0], args[0])
        raise HostError(f"{args[0]} is not installed", f"install the Debian package {package}")


def message(result: subprocess.CompletedProcess) -> str:
    """The last non-empty line a tool wrote to stderr: usually the reason it failed."""
    lines = [line for line in result.stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {result.returncode}"
