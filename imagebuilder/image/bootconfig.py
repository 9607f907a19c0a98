"""What the boot loader is told: grub configuration and environment, and the kernel config."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field


@dataclass
class MenuEntry:
    title: str
    entry_id: str = ""
    kernel: str = ""
    cmdline: str = ""
    initrds: list[str] = field(default_factory=list)
    children: list[MenuEntry] = field(default_factory=list)  # a submenu's entries


@dataclass
class GrubConfig:
    default: str
    entries: list[MenuEntry]
    search_uuid: str = ""
    configfile: str = ""

    def default_entry(self) -> MenuEntry | None:
        """Resolve grub's ``default`` (index, title or id; ``>`` walks into submenus)."""
        entries, chosen = self.entries, None
        for part in self.default.split(">"):
            chosen = next((entry for index, entry in enumerate(entries)
                           if part in (str(index), entry.title, entry.entry_id)), None)
            if chosen is None:
                return None
            entries = chosen.children
        return chosen


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote: grub would reject the line as well
        return []


def parse_grub_config(text: str, saved_entry: str = "") -> GrubConfig:
    """The parts of a grub.cfg that decide what boots: entries, default, and where $root is.

    grub-mkconfig writes ``set default="${saved_entry}"`` on distributions that use grubenv (SUSE),
    and a literal index on Debian; both are resolved here.
    """
    config = GrubConfig(default="0", entries=[])
    stack: list[MenuEntry] = []
    for line in text.splitlines():
        words = _words(line)
        if not words:
            continue
        command = words[0]
        if command in ("menuentry", "submenu"):
            entry = MenuEntry(title=words[1] if len(words) > 1 else "")
            if "$menuentry_id_option" in line or "--id" in words:
                entry.entry_id = words[-2] if words[-1] == "{" else words[-1]
            (stack[-1].children if stack else config.entries).append(entry)
            stack.append(entry)
        elif command == "}" and stack:
            stack.pop()
        elif command in ("linux", "linuxefi") and stack and len(words) > 1:
            stack[-1].kernel, stack[-1].cmdline = words[1], " ".join(words[2:])
        elif command in ("initrd", "initrdefi") and stack:
            stack[-1].initrds = words[1:]
        elif command == "set" and len(words) > 1 and words[1].startswith("default="):
            value = words[1].removeprefix("default=")
            if value in ("${saved_entry}", "saved"):
                config.default = saved_entry or "0"
            elif "$" not in value:
                config.default = value
        elif command == "search" and "--fs-uuid" in words:
            config.search_uuid = words[-1]
        elif command == "configfile" and len(words) > 1:
            config.configfile = re.sub(r"^\(\$?\w*\)", "", words[1])
    return config


def parse_grubenv(text: str) -> str:
    match = re.search(r"^saved_entry=(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def parse_kernel_config(text: str) -> dict[str, str]:
    """CONFIG_X=value lines; options that are ``# ... is not set`` or absent are simply missing."""
    options = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("CONFIG_"):
            options[name] = value.strip()
    return options
