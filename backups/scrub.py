"""Secrets out of what tools say, before it is stored, shown or sent (issue 13 §5).

A tool's stderr and error lines end up on the run, in the admin and in
notifications. Tools rarely print secrets, but a DSN with a password, a
``password=…`` in a connection string, a bearer token in a kubectl error or
an ``AUTH`` command can slip through; and the password a source names is
known when its tool runs, so it is removed verbatim too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host → scheme://user:***@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(@)"), rf"\1{MASK}\2"),
    # password=…, PGPASSWORD=…, token: …, api_key=…, secret "…" (quoted or not)
    (
        re.compile(
            r"(?i)\b((?:[a-z0-9_]*pass(?:word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key"
            r"|auth[_-]?token|client[_-]?secret|rediscli_auth|credentials?)\b[\"']?\s*[=:]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"
        ),
        rf"\1{MASK}",
    ),
    # Bearer …, Authorization: Basic …
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {MASK}"),
    (re.compile(r"(?i)\b(authorization:\s*basic)\s+[A-Za-z0-9+/=]{4,}"), rf"\1 {MASK}"),
    # A Redis AUTH command echoed back: AUTH [user] password (not "AUTH failed: …")
    (re.compile(r"\b(AUTH\s+)(?!failed\b)\S+(\s+\S+)?"), rf"\1{MASK}"),
    # JSON web tokens (service-account tokens)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),
]


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with known ``secrets`` and anything that looks like a credential masked."""
    if not text:
        return text
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def last_lines(text: str, count: int = 10, width: int = 300) -> list[str]:
    """The last ``count`` non-empty lines of ``text``, each cut to ``width``, scrubbed."""
    lines = [line.rstrip() for line in scrub(text).splitlines() if line.strip()]
    return [line[:width] for line in lines[-count:]]
