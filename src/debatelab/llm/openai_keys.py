"""API keys of the OpenAI-compatible backend: where a key comes from, what makes one acceptable,
and how any text that might quote it is masked.

The key comes from ``$api_key_env`` or ``api_key_file`` and must be printable ASCII without
spaces; any other key (a newline, tab, control or non-ASCII character, a space) is refused before
any request, without being shown. The key never leaves the HTTP header: every message that could
quote it (servers do, whole or masked as ``sk-ab***wxyz``) goes through :func:`redact`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import DebatelabError
from ..readers import read_text
from .options import BackendOptions

NO_KEY = "EMPTY"  # local servers ignore the key, but the SDK insists on having one
KEY_RULE = "an API key is printable ASCII without spaces"
# A key as servers quote it masked (OpenAI's 401: "sk-abc1***...***wxyz"): redacted whole.
MASKED_KEY = re.compile(r"[\w-]*\*{3,}[\w-]*")
KEY_PIECE = re.compile(r"[\w.-]{8,}")  # runs this long that occur in the key are redacted too

_NAMED = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space", "\0": "a NUL character"}


def key_problem(key: str) -> str | None:
    """What is wrong with ``key`` as an HTTP bearer token, without quoting any of it; None if fine."""
    for i, char in enumerate(key, start=1):
        if char in _NAMED:
            what = _NAMED[char]
        elif ord(char) < 0x20 or ord(char) == 0x7F or 0x80 <= ord(char) <= 0x9F:
            what = "a control character"
        elif ord(char) > 0x7E:
            what = "a non-ASCII character"
        else:
            continue
        return f"contains {what} (character {i} of {len(key)})"
    return None


def check_key(key: str, source: str) -> str:
    problem = key_problem(key)
    if problem:
        raise DebatelabError(f"the API key in {source} {problem}; {KEY_RULE} (the key is not shown)")
    return key


def read_key_file(path: Path) -> str:
    """The key in ``path``, which only its owner may read or write (as ssh insists for its keys)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise DebatelabError(f"API key file not found: {path}") from None
    except OSError as exc:
        raise DebatelabError(f"cannot read API key file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise DebatelabError(f"API key file {path} has mode {mode:04o}, open to group or others: chmod 600 {path}")
    key = read_text(path, "API key file").rstrip("\r\n")  # line endings are not part of the key
    if not key:
        raise DebatelabError(f"API key file {path} is empty")
    return check_key(key, f"API key file {path}")


def resolve_key(options: BackendOptions, base_url: str) -> str:
    """From $api_key_env, else api_key_file; local servers need none. A malformed key is refused."""
    key = os.environ.get(options.api_key_env, "")
    if key:
        check_key(key, f"${options.api_key_env}")
    elif options.api_key_file:
        key = read_key_file(Path(options.api_key_file).expanduser())
    if not key and not is_loopback(base_url):
        raise DebatelabError(
            f"missing API key: set ${options.api_key_env} or api_key_file (or point base_url at a local server)"
        )
    return key or NO_KEY


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (a local server, which needs no key)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact(text: str, key: str) -> str:
    """``text`` with the key masked as ``***``: whole, escaped (repr, JSON), masked by a server
    (``sk-ab***wxyz``), or in pieces of 8 or more characters."""
    if key and key != NO_KEY:
        for form in sorted({key, repr(key)[1:-1], json.dumps(key)[1:-1]}, key=len, reverse=True):
            text = text.replace(form, "***")
        text = KEY_PIECE.sub(lambda m: "***" if _shares_piece(m.group(), key) else m.group(), text)
    return MASKED_KEY.sub("***", text)


def _shares_piece(run: str, key: str, size: int = 8) -> bool:
    return any(run[i:i + size] in key for i in range(len(run) - size + 1))
