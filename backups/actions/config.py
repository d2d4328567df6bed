"""Configuration of backup sources: the only writes to ``BackupSource`` settings.

Administrators only (``portal.manage_portal``). Each change is validated
(``BackupSource.clean``: schedules, credentials, drill targets), saved in one
transaction with exactly one BACKUP_SOURCE_CHANGED audit event. The admin,
commands and anything else call these; none re-implements them.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from backups.actions.common import BackupError
from backups.models import BackupSource
from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.lib import configedit
from portal.lib.permissions import require_perm
from portal.lib.text import UnstorableText, refuse_unstorable

MANAGE_PERMISSION = "portal.manage_portal"

By = User | Actor | str

SOURCE_EDITABLE = (
    "name", "kind", "enabled", "schedule", "transport", "stall_timeout", "dsn", "pg_mode",
    "databases", "pg_role_passwords", "password_env", "password_file", "kubeconfig",
    "kube_context", "kube_kinds", "kube_namespaces", "kube_namespace", "kube_pod",
    "kube_container", "retention_days", "keep_weekly", "keep_monthly", "drill_target",
    "drill_schedule", "rto_target_seconds",
)  # fmt: skip


def _manager(by: By) -> Actor:
    actor = Actor.of(by)
    require_perm(actor.user, MANAGE_PERMISSION, "change backup sources", BackupError)
    return actor


def _storable(fields: dict[str, Any]) -> None:
    try:
        refuse_unstorable({k: v for k, v in fields.items() if isinstance(v, str)})
    except UnstorableText as exc:
        raise BackupError("invalid", str(exc)) from None


def create_source(*, by: By, **fields: Any) -> BackupSource:
    """Register a backup source (one BACKUP_SOURCE_CHANGED event, change "created")."""
    actor = _manager(by)
    _storable(fields)
    with transaction.atomic():
        source = configedit.create(
            BackupSource, fields, editable=SOURCE_EDITABLE, error=BackupError,
            what="backup source",
        )  # fmt: skip
        record(
            AuditEventType.BACKUP_SOURCE_CHANGED,
            actor=actor,
            subject=source,
            # Names of secrets only: BackupSource.clean refuses a password in the DSN.
            details={"change": "created", **configedit.values(source, SOURCE_EDITABLE)},
        )
    return source


def update_source(source: BackupSource | int, *, by: By, **changes: Any) -> BackupSource:
    """Change a backup source (one BACKUP_SOURCE_CHANGED event with old and new values;
    nothing written if nothing changed)."""
    actor = _manager(by)
    _storable(changes)
    pk = source.pk if isinstance(source, BackupSource) else source
    with transaction.atomic():
        saved, diff = configedit.update(
            BackupSource, pk, changes, editable=SOURCE_EDITABLE, error=BackupError,
            what="backup source",
        )  # fmt: skip
        if diff:
            record(
                AuditEventType.BACKUP_SOURCE_CHANGED,
                actor=actor,
                subject=saved,
                details={"change": "updated", "name": saved.name, "changes": diff},
            )
    return saved
