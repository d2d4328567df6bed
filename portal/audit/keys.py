"""Audit HMAC keys: from settings or a secret file, never from the database.

``AUDIT_HMAC_KEYS`` lists ``id:secret`` entries, the first signs and the rest only
verify (rotation); ``AUDIT_HMAC_KEY`` is the one-key shorthand. Without either, a
key derived from ``SECRET_KEY`` with HKDF signs (development, tests). Keys derived
from ``SECRET_KEY`` and its fallbacks always verify. docs/security.md.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from portal.lib.env import env_secret

_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,24}")
MIN_SECRET_CHARS = 32


class AuditKey:
    """One HMAC-SHA256 key, with its pads pre-hashed: a MAC is two copies and two updates."""

    __slots__ = ("id", "source", "_inner", "_outer")

    def __init__(self, key_id: str, secret: bytes, source: str) -> None:
        self.id, self.source = key_id, source
        if len(secret) > 64:  # RFC 2104: longer keys are hashed first
            secret = hashlib.sha256(secret).digest()
        block = secret.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def mac(self, data: bytes) -> str:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:  # never the secret
        return f"<AuditKey {self.id} from {self.source}>"


@dataclass(frozen=True)
class Keyring:
    signing: AuditKey
    by_id: dict[str, AuditKey]

    @property
    def derived(self) -> bool:
        return self.signing.source.startswith("SECRET_KEY")


def _fingerprint(secret: bytes) -> str:
    return hmac.new(secret, b"portal audit key id", hashlib.sha256).hexdigest()[:8]


def derive_key(secret_key: str) -> bytes:
    """The fallback key: HKDF-SHA256 of Django's SECRET_KEY (never stored anywhere)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"ops-portal audit", info=b"audit-hmac v1"
    ).derive(secret_key.encode())


def _parse_keys(raw: str | Mapping[str, str], name: str) -> list[tuple[str, str]]:
    if isinstance(raw, Mapping):
        pairs = [(str(k), str(v)) for k, v in raw.items()]
    else:
        pairs = []
        entries = [e.strip() for e in re.split(r"[,\n]", raw) if e.strip()]
        for number, entry in enumerate(entries, 1):
            key_id, sep, secret = entry.partition(":")
            if not sep:
                raise ImproperlyConfigured(
                    f"{name}: entry {number} is not id:secret (e.g. 2026a:<64 hex digits>)."
                )
            pairs.append((key_id.strip(), secret.strip()))
    seen: set[str] = set()
    for key_id, secret in pairs:
        if not _KEY_ID.fullmatch(key_id):
            raise ImproperlyConfigured(
                f"{name}: key id {key_id!r} must be 1-24 letters, digits, '.', '_' or '-'."
            )
        if key_id in seen:
            raise ImproperlyConfigured(f"{name}: key id {key_id!r} appears twice.")
        seen.add(key_id)
        if len(secret) < MIN_SECRET_CHARS:
            raise ImproperlyConfigured(
                f"{name}: the secret of key {key_id!r} is shorter than {MIN_SECRET_CHARS} "
                "characters (use e.g. `openssl rand -hex 32`)."
            )
    return pairs


@functools.cache
def _env_keys() -> tuple[str | None, str | None]:
    # Read once: NAME_FILE variants would otherwise read a file on every record().
    return env_secret("AUDIT_HMAC_KEYS"), env_secret("AUDIT_HMAC_KEY")


def _key_settings() -> tuple:
    keys = settings.AUDIT_HMAC_KEYS
    key = settings.AUDIT_HMAC_KEY
    if keys is None and key is None:
        keys, key = _env_keys()
    if isinstance(keys, Mapping):
        keys = tuple(keys.items())
    return (
        keys or "",
        key or "",
        settings.SECRET_KEY,
        tuple(settings.SECRET_KEY_FALLBACKS),
    )


@functools.lru_cache(maxsize=8)
def _build_keyring(keys: Any, key: str, secret_key: str, fallbacks: tuple[str, ...]) -> Keyring:
    if keys and key:
        raise ImproperlyConfigured("Set AUDIT_HMAC_KEYS or AUDIT_HMAC_KEY, not both.")
    configured: list[AuditKey] = []
    if keys:
        raw = dict(keys) if isinstance(keys, tuple) else keys
        for key_id, secret in _parse_keys(raw, "AUDIT_HMAC_KEYS"):
            configured.append(AuditKey(key_id, secret.encode(), "AUDIT_HMAC_KEYS"))
    elif key:
        if len(key) < MIN_SECRET_CHARS:
            raise ImproperlyConfigured(
                f"AUDIT_HMAC_KEY is shorter than {MIN_SECRET_CHARS} characters "
                "(use e.g. `openssl rand -hex 32`)."
            )
        configured.append(
            AuditKey(f"k-{_fingerprint(key.encode())}", key.encode(), "AUDIT_HMAC_KEY")
        )
    # Keys derived from SECRET_KEY (and its fallbacks) always verify: rows signed
    # before a real key was configured stay valid. They sign only if nothing else does.
    derived = []
    for number, secret in enumerate((secret_key, *fallbacks)):
        material = derive_key(secret)
        source = "SECRET_KEY" if number == 0 else f"SECRET_KEY_FALLBACKS[{number - 1}]"
        derived.append(AuditKey(f"sk-{_fingerprint(material)}", material, source))
    ring = configured + derived
    by_id: dict[str, AuditKey] = {}
    for audit_key in ring:
        by_id.setdefault(audit_key.id, audit_key)
    return Keyring(signing=ring[0], by_id=by_id)


def keyring() -> Keyring:
    """The configured keys (cached; settings overrides in tests take effect at once)."""
    return _build_keyring(*_key_settings())


@register(Tags.security)
def check_audit_keys(app_configs: object, **kwargs: object) -> list[CheckMessage]:
    try:
        ring = keyring()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), hint="See docs/security.md, audit keys.", id="portal.E030")]
    if ring.derived and not settings.DEBUG:
        return [
            Warning(
                "The audit log is signed with a key derived from SECRET_KEY.",
                hint="Set AUDIT_HMAC_KEYS (or AUDIT_HMAC_KEYS_FILE) to a key of its own, so "
                "rotating SECRET_KEY never touches the audit chain (docs/security.md).",
                id="portal.W030",
            )
        ]
    return []
