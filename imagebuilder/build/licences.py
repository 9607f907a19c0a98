"""What a package itself says about its licence and copyright, in SPDX's terms.

Debian: the package's ``/usr/share/doc/PACKAGE/copyright``.  In the machine-readable format
(DEP-5, https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/) every ``Files``
paragraph names its licence with short names (``GPL-2+``, ``Expat``, ``LGPL-3+ or GPL-2+``) and
its holders in ``Copyright``; a free-form file says the same in prose: its copyright notice
lines are taken, its licence stays NOASSERTION.  SUSE: the rpm ``License`` tag, which SUSE writes in
SPDX's words (KIWI's package list carries it); rpm headers have no copyright field.

A short name that is an SPDX licence identifier (in any case, with DEP-5's ``+`` as SPDX's
``-or-later``) becomes that identifier; any other becomes a ``LicenseRef-`` whose text is the
one the copyright file gives for it (``Licence.texts``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from license_expression import get_spdx_licensing

COPYRIGHT_FILE = "usr/share/doc/{package}/copyright"
DEP5_FORMAT = re.compile(r"^Format:\s*\S*copyright-format/1\.0", re.IGNORECASE)
# DEP-5 names that differ from SPDX's identifier for the same licence (the spec's own list).
DEP5_ALIASES = {"expat": "MIT", "zlib": "Zlib", "apache-2": "Apache-2.0", "cc0": "CC0-1.0"}
# Families whose DEP-5 name carries a bare version ("GPL-2"): SPDX adds ".0" and -only/-or-later.
VERSIONED = re.compile(r"(A?GPL|LGPL|GFDL|GFDL-NIV)-?v?(\d+(?:\.\d+)?)(\+?)", re.IGNORECASE)
# DEP-5: "and" binds tighter than "or", as in SPDX; after a comma either binds loosest
# ("A, and B or C" is A AND (B OR C)).  An operator stands between blanks ("GPL-2+-or-X11" is one name).
OPERATOR = re.compile(r"(\s*,\s*(?:and|or)\s+|\s+(?:and|or)\s+)", re.IGNORECASE)
# A copyright notice in a free-form copyright file's line: "Copyright (C) 1991-2022 Free ...",
# "Debian support files Copyright (C) 2006 ...", "Copyright 2000 Red Hat", "(c) 1999 ...".
NOTICE = re.compile(r"\bcopyright\s*(?:\(c\)|©|\d{4})|(?:^|\s)(?:\(c\)|©)\s*\d{4}", re.IGNORECASE)
MAX_SYMLINKS = 16


@dataclass
class Licence:
    """One package's licence (an SPDX expression, None: no assertion), copyright text (None: no
    assertion) and the texts of the ``LicenseRef-`` identifiers its expression uses."""

    expression: str | None = None
    copyright: str | None = None
    texts: dict[str, str] = field(default_factory=dict)
    source: str = ""  # where it was read, for the SBOMs' licence comments


@cache
def _spdx_identifiers() -> dict[str, str]:
    """SPDX's licence and exception identifiers by their lower-case form."""
    return {key.lower(): key for key in get_spdx_licensing().known_symbols
            if not key.startswith("LicenseRef-")}


def licence_ref(name: str, text: str | None) -> str:
    """A ``LicenseRef-`` for a licence SPDX has no identifier for; the text's digest keeps two
    packages' different texts under one name apart."""
    ref = "LicenseRef-" + re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")
    return f"{ref}-{hashlib.sha256(text.encode()).hexdigest()[:8]}" if text else ref


def spdx_name(name: str) -> str | None:
    """The SPDX identifier for one licence name (DEP-5 short name or rpm tag word), or None."""
    name = name.strip()
    known = _spdx_identifiers()
    if name.lower() in DEP5_ALIASES:
        return DEP5_ALIASES[name.lower()]
    if name.lower() in known:
        return known[name.lower()]
    match = VERSIONED.fullmatch(name)
    if match:
        family, version, later = match.groups()
        version = version if "." in version else f"{version}.0"
        family = family.upper()
        if family == "GFDL-NIV":  # SPDX: GFDL-1.3-no-invariants-or-later
            family, version = "GFDL", f"{version.removesuffix('.0')}-no-invariants"
        for suffix in (("-or-later", "+") if later else ("-only", "")):
            candidate = f"{family}-{version}{suffix}"
            if candidate.lower() in known:
                return known[candidate.lower()]
    return None


def expression(names: str, texts: dict[str, str], found: dict[str, str]) -> str | None:
    """An SPDX expression from a licence field (``GPL-2+ or Artistic``, ``GPL-2.0-only AND
    SUSE-Foo``): known names as identifiers, others as LicenseRefs (their texts from ``texts``,
    by name, added to ``found``); None for an empty field."""
    groups: list[list[str]] = [[]]
    joins = []
    for index, token in enumerate(OPERATOR.split(names.strip())):
        if index % 2:  # an operator
            word = token.strip(" ,").upper()
            if "," in token:
                groups.append([])
                joins.append(word)
            else:
                groups[-1].append(word)
            continue
        name = token.strip().strip("()")
        if not name:
            return None
        identifier = spdx_name(name)
        if identifier is None:
            text = texts.get(name.lower())
            identifier = licence_ref(name, text)
            found[identifier] = text or ""
        groups[-1].append(identifier)
    parts = [" ".join(group) if len(group) == 1 or len(groups) == 1 else f"({' '.join(group)})"
             for group in groups]
    return " ".join(part for pair in zip(["", *joins], parts) for part in pair if part)


def combined(expressions: list[str]) -> str | None:
    """Several licences that all apply (one per Files paragraph) as one expression, each term
    once."""
    terms = [term for one in expressions for term in _top_level(one, " AND ")]
    unique = list(dict.fromkeys(terms))
    if len(unique) <= 1:
        return unique[0] if unique else None
    return " AND ".join(f"({term})" if len(_top_level(term, " OR ")) > 1 else term
                        for term in unique)


def _top_level(expression: str, operator: str) -> list[str]:
    """``expression`` split at ``operator`` outside parentheses."""
    parts, depth, start = [], 0, 0
    for index, character in enumerate(expression):
        depth += {"(": 1, ")": -1}.get(character, 0)
        if depth == 0 and expression.startswith(operator, index):
            parts.append(expression[start:index])
            start = index + len(operator)
    return [*parts, expression[start:]]


def paragraphs(text: str) -> list[dict[str, str]]:
    """The RFC 822-style paragraphs of a DEP-5 file: field -> value (continuation lines kept,
    a lone ``.`` as an empty line)."""
    result = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + ("" if line.strip() == "." else line.strip())
            elif ":" in line and not line.startswith("#"):
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields:
            result.append(fields)
    return result


def read_dep5(text: str) -> Licence | None:
    """The licence and copyright a machine-readable copyright file states; None when it is not
    in that format."""
    if not DEP5_FORMAT.match(text):
        return None
    stanzas = paragraphs(text)
    # Stand-alone License paragraphs give the text of a name used in the Files paragraphs.
    texts = {}
    for stanza in stanzas:
        if "license" in stanza and "files" not in stanza:
            name, _, body = stanza["license"].partition("\n")
            if body.strip():
                texts[name.strip().lower()] = body.strip()
    found: dict[str, str] = {}
    expressions, holders = [], []
    for stanza in stanzas:
        if "files" not in stanza or "license" not in stanza:
            continue
        name, _, body = stanza["license"].partition("\n")
        if body.strip():  # a Files paragraph may carry its licence's text itself
            texts.setdefault(name.strip().lower(), body.strip())
        named = expression(name, texts, found)
        if named is None:  # a Files paragraph without a licence name: the file says nothing
            return Licence(None, None, {}, "")
        expressions.append(named)
        holders += [line.strip() for line in stanza.get("copyright", "").splitlines() if line.strip()]
    return Licence(combined(expressions), "\n".join(dict.fromkeys(holders)) or None, found)


def read_package_copyright(root: Path, package: str, siblings: list[str]) -> Licence:
    """The licence of a Debian package from its copyright file in the image root, or, when the
    image has none for it, from that of a binary package of the same source (``siblings``)."""
    relative = COPYRIGHT_FILE.format(package=package)
    for name in dict.fromkeys([package, *siblings]):
        path = inside(root, COPYRIGHT_FILE.format(package=name))
        try:
            text = path.read_text(errors="replace") if path else None
        except OSError:
            text = None
        if text is not None:
            break
    else:
        return Licence(source=f"/{relative} is not in the image, nor one of its source package's")
    where = f"/{COPYRIGHT_FILE.format(package=name)}" + (
        "" if name == package else f", its source package's (/{relative} is not in the image)")
    licence = read_dep5(text)
    if licence is None:  # prose: its notices can be picked out, its licence cannot
        notices = [line.strip() for line in text.splitlines() if NOTICE.search(line)]
        return Licence(None, "\n".join(dict.fromkeys(notices)) or None, {},
                       f"{where} is not machine-readable (DEP-5)")
    licence.source = f"{where}: DEP-5 License and Copyright fields"
    return licence


def read_rpm_tag(tag: str | None) -> Licence:
    """The licence of an rpm from its License tag (SUSE writes SPDX expressions there)."""
    if not tag:
        return Licence(source="the rpm header has no License tag")
    found: dict[str, str] = {}
    return Licence(expression(tag, {}, found), None, found, "the rpm header's License tag")


def inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` with every symlink resolved inside ``root`` (an image's absolute links
    point into the image, never the host); None when it leads nowhere."""
    parts, resolved, hops = list(Path(relative).parts), root, 0
    while parts:
        part = parts.pop(0)
        if part in ("", "/", "."):
            continue
        if part == "..":
            resolved = resolved.parent if resolved != root else root
            continue
        candidate = resolved / part
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                return None
            target = os.readlink(candidate)
            parts = list(Path(target).parts) + parts
            if target.startswith("/"):
                resolved = root
            continue
        resolved = candidate
    return resolved if resolved.exists() else None
