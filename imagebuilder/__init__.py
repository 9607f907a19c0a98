"""tdx-image: build, validate and boot Intel TDX guest images with KIWI.

Flow, one module per step: targets (what to build) -> compose (the description KIWI builds)
-> kiwi (the KIWI run) -> publish (artifacts) -> validate (offline checks) -> boot (QEMU).
"""

__version__ = "0.1.0"
