"""Text the tool shows or writes about what users gave it: passwords in URLs replaced by ``***``
(every message and document, not only logs), and control characters escaped so that one
message stays one line (a newline in a path would forge a second ``error:`` line)."""

from __future__ import annotations

import re
import urllib.parse

# user:password@host after "//" (RFC 3986 userinfo), or after "/", a quote or a blank in what
# only looks like a URL (ftp:/user:secret@host): the password ends at the last "@" before a "/".
_URL_PASSWORD = re.compile(r"""(?P<head>(?:^|[\s/'"])[^/@\s:'"]*):(?P<password>[^/\s'"]*)@""")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def url_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


def url_secrets(url: str) -> list[str]:
    """The password in ``url``, as written and decoded, for a log's redactor."""
    match = _URL_PASSWORD.search(url)
    if not match or not match.group("password"):
        return []
    password = match.group("password")
    return sorted({password, urllib.parse.unquote(password)})


def one_line(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\n``), never acted on."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)
