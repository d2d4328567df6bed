"""System checks of the backups settings (``manage.py check``)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from backups import encryption


@register()
def check_encryption_keys(app_configs, **kwargs):
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
