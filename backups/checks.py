"""System checks of the backups settings (``manage.py check``)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured

from backups import encryption


@register()
def check_encryption_keys(app_configs: object, **kwargs: object) -> list[CheckMessage]:
    try:
        ring = encryption.keyring()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), hint="See docs/backups.md, encryption at rest.", id="backups.E001")]
    if settings.BACKUP_ENCRYPTION and ring.current is None:
        return [
            Error(
                "Backups are encrypted at rest (BACKUP_ENCRYPTION is on: the default when "
                "DEBUG is off) but no key is set.",
                hint="Set BACKUP_ENCRYPTION_KEYS (or BACKUP_ENCRYPTION_KEYS_FILE) to "
                "'id:<32 bytes in base64>' (openssl rand -base64 32), kept outside the "
                "database and the backups; or BACKUP_ENCRYPTION=0 to store them in the clear.",
                id="backups.E002",
            )
        ]
    return []


@register()
def check_storage(app_configs: object, **kwargs: object) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    backend, copy = settings.BACKUP_STORAGE, settings.BACKUP_COPY_TO
    if backend not in {"local", "s3"}:
        errors.append(Error(f"BACKUP_STORAGE={backend!r}: use local or s3.", id="backups.E003"))
    if copy not in {"", "s3"}:
        errors.append(Error(f"BACKUP_COPY_TO={copy!r}: use s3 or leave it blank.",
                            id="backups.E003"))  # fmt: skip
    if "s3" in (backend, copy) and not (settings.BACKUP_S3_ENDPOINT and settings.BACKUP_S3_BUCKET):
        errors.append(
            Error(
                "An S3 store is configured without BACKUP_S3_ENDPOINT and BACKUP_S3_BUCKET.",
                hint="Set both (e.g. https://s3.eu-west-1.amazonaws.com and a bucket name).",
                id="backups.E004",
            )
        )
    return errors
