"""What a build killed before its cleanup could run (SIGKILL, a crash, power loss) left beside
``--out``: its staging directory, with KIWI's temporary files and mount points inside it
(``--temp-dir``).  The next build into the same ``--out`` removes it, saying so.

Only directories a build marked as its own are touched: the name ``.OUT.staging-*`` and an owner
record naming this ``--out`` and a process that is gone.  The caller holds ``--out``'s lock, so
no live build can be using them."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from . import cleanup
from .outdir import STAGING_SUFFIX
from .staging import Staging
from ..core.inputs import parse_json


def mark(staging: Staging, out_dir: Path) -> None:
    """Say, first thing, that ``staging`` is this build's."""
    staging.owner.write_text(json.dumps({"tool": "tdx-image", "out": str(out_dir),
                                         "pid": os.getpid()}) + "\n")


def remove_stale_staging(out_dir: Path) -> list[str]:
    """Remove the staging directories killed builds into ``out_dir`` left; say which."""
    removed = []
    pattern = f".{glob.escape(out_dir.name)}{STAGING_SUFFIX}*"
    for candidate in sorted(out_dir.parent.glob(pattern)):
        pid = _killed_builds_pid(Staging(candidate), out_dir)
        if pid is not None:
            cleanup.remove(candidate)
            removed.append(f"{candidate} (build pid {pid})")
    return removed


def _killed_builds_pid(staging: Staging, out_dir: Path) -> int | None:
    if staging.root.is_symlink() or not staging.root.is_dir():
        return None
    try:
        if staging.owner.is_symlink() or staging.owner.stat().st_size > 4096:
            return None
        owner = parse_json(staging.owner.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or owner.get("tool") != "tdx-image" \
            or owner.get("out") != str(out_dir) or not isinstance(owner.get("pid"), int):
        return None
    pid = owner["pid"]
    return None if pid == os.getpid() or Path(f"/proc/{pid}").exists() else pid
