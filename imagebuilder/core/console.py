"""The rich console every verb prints with."""

from __future__ import annotations

import rich.console


class Console(rich.console.Console):
    """rich's Console, except when stdout's reader has gone (``measure ... | head -c1``): rich
    would exit 1 without a word; this raises BrokenPipeError for the CLI to end with its one
    error line (cli.py)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError("stdout was closed")
