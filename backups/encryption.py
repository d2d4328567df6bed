"""Encryption at rest of backup artifacts: streaming AES-256-GCM in chunks (issue 13 §6).

Keys come from ``BACKUP_ENCRYPTION_KEYS`` (or ``BACKUP_ENCRYPTION_KEYS_FILE``),
``id:base64key,…`` with 32-byte keys: the first encrypts new artifacts, all
of them decrypt. They are never stored in the database: each artifact records
only the id of its key (``BackupArtifact.key_id``), so keys rotate by putting a
new one first and keeping the old ones as long as backups made with them are.

The stored format (``PBKENC1``), written and read in one pass with at most one
chunk (1 MiB) in memory:

    header  = magic "PBKENC1\\n" (8) | key id length (1) | key id (utf-8)
              | salt (16) | nonce prefix (8) | chunk size (4, big-endian)
    frame   = final flag (1: 0 more, 1 last) | ciphertext length (4) | ciphertext+tag

Each file gets its own key, HKDF-SHA256(master key, salt, "portal-backup " + id),
so nonces never repeat across files. Chunk *n*'s nonce is the prefix followed
by *n* (4 bytes, big-endian): chunks cannot be reordered or dropped. Its
additional data is the whole header plus its final flag: the header cannot be
altered, and a file cut after any chunk is detected (the last chunk read is not
marked final), as are bytes after the final chunk.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from backups.streaming import Reader

MAGIC = b"PBKENC1\n"
SCHEME = "aes-256-gcm-chunked-v1"
CHUNK = 1 << 20
TAG = 16
KEY_BYTES = 32
MAX_CHUNKS = 1 << 32
_FRAME = struct.Struct("!BI")
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class EncryptionError(ValueError):
    """An artifact cannot be decrypted (no such key, wrong key, damaged or truncated)."""


@dataclass(frozen=True)
class Key:
    id: str
    secret: bytes = b""

    def __repr__(self) -> str:  # never the secret, in logs or tracebacks
        return f"Key({self.id!r})"


@dataclass(frozen=True)
class Keyring:
    keys: tuple[Key, ...]

    @property
    def current(self) -> Key | None:
        return self.keys[0] if self.keys else None

    @property
    def ids(self) -> list[str]:
        return [k.id for k in self.keys]

    def get(self, key_id: str) -> Key:
        for key in self.keys:
            if key.id == key_id:
                return key
        have = ", ".join(self.ids) if self.keys else "none configured"
        raise EncryptionError(
            f"encrypted with key {key_id!r}, which is not in BACKUP_ENCRYPTION_KEYS "
            f"(have: {have}): add that key to read this backup"
        )


def parse_keys(raw: str | None) -> Keyring:
    """``id:base64key,…`` → keys (first: the one that encrypts); the error never shows a key."""
    keys: list[Key] = []
    for number, entry in enumerate((raw or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not _KEY_ID.match(key_id):
            raise ImproperlyConfigured(
                f"BACKUP_ENCRYPTION_KEYS entry {number} is not 'id:base64key' with an id of "
                "letters, digits, '_', '.', '-'"
            )
        text = encoded.strip()
        try:  # standard or URL-safe alphabet, padding optional
            secret = base64.b64decode(
                (text + "=" * (-len(text) % 4)).replace("-", "+").replace("_", "/"), validate=True
            )
        except (binascii.Error, ValueError):
            raise ImproperlyConfigured(
                f"BACKUP_ENCRYPTION_KEYS key {key_id!r} is not base64"
            ) from None
        if len(secret) != KEY_BYTES:
            raise ImproperlyConfigured(
                f"BACKUP_ENCRYPTION_KEYS key {key_id!r} is {len(secret)} bytes; it must be "
                f"{KEY_BYTES} (e.g. `openssl rand -base64 32`)"
            )
        if any(k.id == key_id for k in keys):
            raise ImproperlyConfigured(f"BACKUP_ENCRYPTION_KEYS names key {key_id!r} twice")
        keys.append(Key(key_id, secret))
    return Keyring(tuple(keys))


def keyring() -> Keyring:
    """The configured keys (read from settings on each use: tests and rotation see changes)."""
    from django.conf import settings

    return parse_keys(settings.BACKUP_ENCRYPTION_KEYS)


def encrypting_key() -> Key | None:
    """The key new artifacts are encrypted with; None when encryption is off."""
    from django.conf import settings

    if not settings.BACKUP_ENCRYPTION:
        return None
    key = keyring().current
    if key is None:
        raise EncryptionError(
            "BACKUP_ENCRYPTION is on but BACKUP_ENCRYPTION_KEYS is empty: no backup is written "
            "unencrypted (set a key, or BACKUP_ENCRYPTION=0)"
        )
    return key


def _file_key(master: Key, salt: bytes) -> AESGCM:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=salt,
        info=b"portal-backup " + master.id.encode(),
    )
    return AESGCM(hkdf.derive(master.secret))


def _header(key_id: str, salt: bytes, prefix: bytes, chunk: int) -> bytes:
    encoded = key_id.encode()
    return MAGIC + bytes([len(encoded)]) + encoded + salt + prefix + struct.pack("!I", chunk)


class EncryptingWriter:
    """Encrypts what is written through it into ``out`` (a file-like ``write``), chunk by chunk.

    ``finish()`` writes the final chunk; a stream without it reads as truncated.
    """

    def __init__(self, out, key: Key, chunk: int = CHUNK) -> None:
        self.out = out
        self.key_id = key.id
        self.chunk = chunk
        salt, self.prefix = os.urandom(16), os.urandom(8)
        self.header = _header(key.id, salt, self.prefix, chunk)
        self.aead = _file_key(key, salt)
        self.counter = 0
        self.buffer = bytearray()
        self.finished = False
        out.write(self.header)

    def _emit(self, data: bytes | memoryview, final: bool) -> None:
        if self.counter >= MAX_CHUNKS:
            raise EncryptionError("artifact too large for one encrypted stream")
        nonce = self.prefix + struct.pack("!I", self.counter)
        sealed = self.aead.encrypt(nonce, bytes(data), self.header + (b"\1" if final else b"\0"))
        self.out.write(_FRAME.pack(1 if final else 0, len(sealed)))
        self.out.write(sealed)
        self.counter += 1

    def write(self, data) -> int:
        self.buffer += data
        if len(self.buffer) > self.chunk:
            view = memoryview(self.buffer)
            cut = (len(self.buffer) - 1) // self.chunk * self.chunk  # keep >= 1 byte back
            for start in range(0, cut, self.chunk):
                self._emit(view[start : start + self.chunk], final=False)
            view.release()
            del self.buffer[:cut]
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if not self.finished:
            self._emit(self.buffer, final=True)
            self.buffer = bytearray()
            self.finished = True


class DecryptingReader:
    """A reader of the plaintext of an encrypted stream; raises ``EncryptionError`` on a
    missing or wrong key, damage, reordering, truncation or trailing bytes. The header
    is read (and the key looked up) at once, before anything else happens."""

    def __init__(self, raw: Reader, ring: Keyring, expected_key_id: str = "") -> None:
        self.raw = raw
        magic = self._exact(len(MAGIC), "header")
        if magic != MAGIC:
            raise EncryptionError(
                "not an encrypted backup (no PBKENC1 header): the file was replaced or damaged"
            )
        (size,) = self._exact(1, "header")
        key_id = self._exact(size, "header").decode(errors="replace")
        salt = self._exact(16, "header")
        self.prefix = self._exact(8, "header")
        chunk_bytes = self._exact(4, "header")
        (self.chunk,) = struct.unpack("!I", chunk_bytes)
        self.header = _header(key_id, salt, self.prefix, self.chunk)
        if expected_key_id and key_id != expected_key_id:
            raise EncryptionError(
                f"the file says key {key_id!r}, the backup recorded {expected_key_id!r}"
            )
        self.key_id = key_id
        self.aead = _file_key(ring.get(key_id), salt)
        self.counter = 0
        self.pending = b""
        self.done = False

    def _exact(self, count: int, what: str) -> bytes:
        data = b""
        while len(data) < count:
            more = self.raw.read(count - len(data))
            if not more:
                raise EncryptionError(
                    f"truncated: the encrypted stream ends inside its {what}"
                    + (f" (chunk {self.counter})" if what == "chunk" else "")
                )
            data += more
        return data

    def _next(self) -> None:
        first = self.raw.read(_FRAME.size)
        if not first:
            raise EncryptionError(
                f"truncated: the encrypted stream ends after chunk {self.counter} without its "
                "final chunk"
            )
        if len(first) < _FRAME.size:
            first += self._exact(_FRAME.size - len(first), "chunk")
        final, length = _FRAME.unpack(first)
        if final > 1 or length < TAG or length > self.chunk + TAG:
            raise EncryptionError(f"damaged: chunk {self.counter} has a bad frame")
        sealed = self._exact(length, "chunk")
        nonce = self.prefix + struct.pack("!I", self.counter)
        try:
            self.pending = self.aead.decrypt(nonce, sealed, self.header + bytes([final]))
        except InvalidTag:
            hint = "wrong key, or the file is damaged" if self.counter == 0 else "damaged"
            raise EncryptionError(
                f"cannot decrypt chunk {self.counter} with key {self.key_id!r}: {hint}"
            ) from None
        self.counter += 1
        if final:
            if self.raw.read(1):
                raise EncryptionError("damaged: bytes after the final chunk")
            self.done = True

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else CHUNK
        while not self.pending and not self.done:
            self._next()
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()
