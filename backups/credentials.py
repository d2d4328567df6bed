"""Where restore credentials may come from, and nowhere else.

A restore target (or the backup's own source, when restoring into it) names
its password: an environment variable, or a file under ``BACKUP_SECRETS_DIR``.
A file anywhere else — a path outside the directory, a symlink that escapes
it, something that is not a regular file — is refused *before it is opened*:
the path is resolved with ``realpath`` (which only reads directory entries
and links) and compared with the directory's real path. Opening then uses
``O_NOFOLLOW`` so a link swapped in after the check is refused too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from django.conf import settings

MAX_SECRET_BYTES = 64 * 1024


class CredentialError(RuntimeError):
    """A credential reference refused or unreadable; the message says what to fix."""


def secrets_dir() -> Path | None:
    value = settings.BACKUP_SECRETS_DIR
    return Path(value) if value else None


def check_file_reference(path: str, *, what: str = "password file") -> Path:
    """The real path of a credential file inside ``BACKUP_SECRETS_DIR``; never opens it.

    A relative ``path`` is taken inside the directory.
    """
    root = secrets_dir()
    if root is None:
        raise CredentialError(
            f"{what} {path}: files are accepted only under BACKUP_SECRETS_DIR, which is not "
            "set (set it, or name an environment variable instead)"
        )
    root_real = os.path.realpath(root)
    if not os.path.isdir(root_real):
        raise CredentialError(f"BACKUP_SECRETS_DIR {root} is not a directory")
    candidate = Path(path) if os.path.isabs(path) else Path(root_real) / path
    real = os.path.realpath(candidate)
    if real == root_real or os.path.commonpath([root_real, real]) != root_real:
        hint = f" (it resolves to {real})" if real != os.path.normpath(candidate) else ""
        raise CredentialError(
            f"{what} {path} is outside BACKUP_SECRETS_DIR ({root}){hint}: refused, not read"
        )
    return Path(real)


def read_secret_file(path: str, *, what: str = "password file") -> str:
    """The contents of a credential file checked by ``check_file_reference`` (first line)."""
    real = check_file_reference(path, what=what)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise CredentialError(f"{what} {path} unreadable: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CredentialError(f"{what} {path} is not a regular file: refused")
        if info.st_size > MAX_SECRET_BYTES:
            raise CredentialError(f"{what} {path} is larger than {MAX_SECRET_BYTES} bytes")
        data = os.read(fd, MAX_SECRET_BYTES)
    finally:
        os.close(fd)
    try:
        return data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise CredentialError(f"{what} {path} is not UTF-8 text") from None


def read_password(password_env: str, password_file: str) -> str | None:
    """The secret a target names, read now (never stored, never logged)."""
    if password_env and password_file:
        raise CredentialError("give a password environment variable or a file, not both")
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise CredentialError(f"environment variable {password_env} (the password) is not set")
        return value
    if password_file:
        return read_secret_file(password_file)
    return None


def check_references(password_file: str = "", kubeconfig: str = "") -> None:
    """Validate the file references of a target without reading them."""
    if password_file:
        check_file_reference(password_file)
    if kubeconfig:
        check_file_reference(kubeconfig, what="kubeconfig")
