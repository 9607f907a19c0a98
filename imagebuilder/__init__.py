"""tdx-image: build, validate and boot Intel TDX guest images with KIWI.

The packages and how they layer are described once, in ARCHITECTURE.md.
"""

__version__ = "0.1.0"
