"""Defaults more than one layer shares, named once."""

from __future__ import annotations

from pathlib import Path

# The package cache every build shares (--cache-dir, TDX_IMAGE_CACHE_DIR).
DEFAULT_CACHE_DIR = Path("/var/cache/tdx-image")
# How long `boot` and `build --boot-test` wait for the self-check: a TCG boot here takes 27-50 s.
DEFAULT_BOOT_TIMEOUT_S = 300.0
