"""URLs as they may be shown: credentials and query strings never reach a log, a record or a tracker.

A data source or a tracking URI can carry secrets: ``https://user:token@host/...``, a signed
``...?X-Amz-Signature=...`` link, ``postgresql://user:password@db/mlflow``. Whatever prints or records
such a URL (messages, ``provenance.json``, MLflow, Prefect) passes it through `redact_url` (or a
whole message through `redact_text`); only the code that connects uses the real one.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

HIDDEN = "***"
# scheme://rest-of-the-url, up to whitespace or a character that ends a URL in prose or repr().
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """`url` with its user info and query replaced by ``***`` and its fragment dropped.

    ``https://user:token@host:8443/a.tar.gz?sig=1#x`` -> ``https://***@host:8443/a.tar.gz?***``.
    Anything without ``scheme://`` (a local path) comes back unchanged.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: show nothing after the scheme
        return f"{url.split('://', 1)[0]}://{HIDDEN}"
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return url
    netloc = f"{HIDDEN}@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    # Put together by hand: urlunsplit would turn sqlite:////abs/path into sqlite://abs/path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{HIDDEN}" if parts.query else "")


def redact_text(text: str) -> str:
    """`text` with every URL in it passed through `redact_url` (for messages that quote a URL)."""

    def redact(match: re.Match) -> str:
        # Punctuation right after a URL belongs to the sentence ("... (store: http://h/?q=1)").
        url = match[0].rstrip(").,;:!?]}")
        return redact_url(url) + match[0][len(url) :]

    return _URL_IN_TEXT.sub(redact, text)
