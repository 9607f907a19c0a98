"""Which distribution this host runs, from /etc/os-release: for install hints in its own words
and for which targets it builds natively."""

from __future__ import annotations

from pathlib import Path

OS_RELEASE = "/etc/os-release"
# Distribution families by the words of ID and ID_LIKE.
FAMILY = {"debian": "debian", "ubuntu": "debian", "fedora": "fedora", "rhel": "fedora",
          "centos": "fedora", "suse": "suse", "opensuse": "suse", "sles": "suse"}


def os_release(path: str = OS_RELEASE) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return fields
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip('"\'')
    return fields


def host_family(path: Path = Path(OS_RELEASE)) -> str | None:
    """debian, fedora or suse from /etc/os-release's ID and ID_LIKE, None for others."""
    fields = os_release(str(path))
    words = " ".join(fields.get(key, "") for key in ("ID", "ID_LIKE")).split()
    return next((FAMILY[word] for word in words if word in FAMILY), None)
