"""Which command-line sources are URLs, and how a URL may be shown without its secrets.

Apart from dumpfs.remote (which imports fsspec and aiohttp, half a second
that a local dump should not pay), so every command can tell and redact a
URL cheaply.
"""

from __future__ import annotations

import re
import urllib.parse

URL = re.compile(r"^(https?|s3)://", re.IGNORECASE)
URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\")>]+", re.IGNORECASE)


def is_url(text: str) -> bool:
    """An http://, https:// or s3:// URL (anything else is a local path)."""
    return bool(URL.match(text))


def redact(url: str) -> str:
    """The URL as it may be shown: no user:password@, no query (a pre-signed URL's signature)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        host = "<redacted>@" + host
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path,
                                    "<redacted>" if parts.query else "", ""))


def redact_all(text: str) -> str:
    """`text` with every URL in it redacted (library messages quote the URL they failed on)."""
    return URL_IN_TEXT.sub(lambda match: redact(match.group()), text)
