"""POST a JSON document to a webhook, and keep its URL out of every error message.

The opener handles http and https only (no file:, ftp: or data: handlers) and
follows no redirects: a webhook that answers 3xx is misconfigured, and
re-posting a body to wherever a redirect points is not something to do
silently. Errors are ``WebhookError`` with a short message that never contains
the URL, its host, path or query (webhook URLs are often the credential).
"""

from __future__ import annotations

import http.client
import json
import urllib.request
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qsl, urlsplit

REDACTED = "[redacted]"
# Path segments and query values at least this long are treated as tokens.
_TOKEN_MIN = 6


class WebhookError(Exception):
    """Delivery failed; the message is safe to store and log."""


class _Headers(urllib.request.BaseHandler):
    """Sets request headers before the HTTP handler adds its defaults (a form Content-Type)."""

    handler_order = 100

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        for name, value in self.headers.items():
            request.add_header(name, value)
        return request

    https_request = http_request


def _opener(headers: dict[str, str]) -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()
    for handler in (
        _Headers(headers),
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def redact(text: str, url: str) -> str:
    """``text`` with the URL and every identifying part of it replaced by ``[redacted]``."""
    if not url:
        return text
    parts = urlsplit(url)
    needles = {url, url.rstrip("/"), parts.netloc, parts.path, parts.query, parts.fragment}
    needles.add(parts.hostname or "")
    needles.add(f"{parts.netloc}{parts.path}")
    needles.update(seg for seg in parts.path.split("/") if len(seg) >= _TOKEN_MIN)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        needles.update(s for s in (value, f"{key}={value}") if len(s) >= _TOKEN_MIN)
    for needle in sorted((s for s in needles if len(s) >= 4), key=len, reverse=True):
        text = text.replace(needle, REDACTED)
    return text


def post_json(
    url: str,
    payload: Any,
    *,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
) -> int:
    """POST ``payload`` as JSON; return the 2xx status, or raise ``WebhookError``."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise WebhookError("the configured URL is not an http(s) URL")
    data = json.dumps(payload, separators=(",", ":"), default=str).encode()
    opener = _opener(
        {
            "Content-Type": "application/json",
            "User-Agent": "ops-portal-notify/1",
            **(headers or {}),
        }
    )
    try:
        with opener.open(url, data=data, timeout=timeout) as response:
            response.read(4096)
            status: int = response.status
            return status
    except HTTPError as exc:
        try:
            snippet = exc.read(300).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException):
            snippet = ""
        message = f"HTTP {exc.code} {exc.reason}" + (f": {snippet}" if snippet else "")
        raise WebhookError(redact(message, url)) from None
    except URLError as exc:
        reason = exc.reason
        detail = f"{reason.__class__.__name__}: {reason}" if isinstance(reason, OSError) else reason
        raise WebhookError(redact(f"network error: {detail}", url)) from None
    except (TimeoutError, OSError, http.client.HTTPException, ValueError) as exc:
        raise WebhookError(redact(f"network error: {exc.__class__.__name__}: {exc}", url)) from None
