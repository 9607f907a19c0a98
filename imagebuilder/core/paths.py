"""Where the package's own files are: the code, the KIWI descriptions and the TDX overlay, in a
checkout or installed from a wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROJECT_ROOT = PACKAGE_DIR.parent  # a checkout's root; site-packages when installed from a wheel


def _data_dir(name: str) -> Path:
    """A wheel carries kiwi_descriptions/ and overlays/ inside the package (pyproject.toml maps
    them there); a checkout keeps them at its top level, beside the package.  KIWI reads real
    directories, so the package must be installed unzipped (as pip does)."""
    packaged = resources.files(PACKAGE_DIR.name) / name
    return Path(str(packaged)) if packaged.is_dir() else PROJECT_ROOT / name


DESCRIPTIONS_DIR = _data_dir("kiwi_descriptions")
OVERLAYS_DIR = _data_dir("overlays")
SHARED_OVERLAY = OVERLAYS_DIR / "tdx"
IS_CHECKOUT = DESCRIPTIONS_DIR.parent == PROJECT_ROOT
