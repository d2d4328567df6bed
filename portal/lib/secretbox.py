"""Symmetric encryption of small secrets at rest, keyed from SECRET_KEY.

Used where a scheme needs the secret itself (HMAC request signing), so a hash
cannot do. Rotating SECRET_KEY makes stored secrets unreadable: re-issue them.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


def _fernet(purpose: str) -> Fernet:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"portal:{purpose}".encode()
    ).derive(settings.SECRET_KEY.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def seal(secret: str, *, purpose: str) -> str:
    return _fernet(purpose).encrypt(secret.encode()).decode()


def unseal(token: str, *, purpose: str) -> str | None:
    try:
        return _fernet(purpose).decrypt(token.encode()).decode()
    except (InvalidToken, ValueError):
        return None
