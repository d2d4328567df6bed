"""Actions on registered restore targets: the only writes to ``RestoreTarget``.

Administrators only (``portal.manage_portal``). Each change is validated
(``RestoreTarget.clean``: credential files must be under
``BACKUP_SECRETS_DIR``), saved in one transaction with its audit event, and
bumps ``revision`` so restores planned against the old version are refused.
The admin, and anything else, calls these; none re-implements them.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F

from backups.actions import BackupError
from backups.models import RestoreTarget
from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.lib.validation import full_clean_or_refuse

MANAGE_PERMISSION = "portal.manage_portal"
FIELDS = ("name", "kind", "enabled", "description", "host", "port", "username", "database",
          "password_env", "password_file", "kubeconfig", "kube_context", "drills")  # fmt: skip


def _check(by: User | Actor | str) -> Actor:
    actor = Actor.of(by)
    if actor.user is None or not actor.user.has_perm(MANAGE_PERMISSION):
        raise BackupError("permission", "Only administrators register or change restore targets.")
    return actor


def _validated(target: RestoreTarget) -> None:
    full_clean_or_refuse(
        target, BackupError, exclude=["revision", "created_by"], prefix="Restore target refused: "
    )


def _values(target: RestoreTarget) -> dict[str, Any]:
    """What the audit log keeps: every field (they hold names of secrets, never secrets)."""
    return {name: getattr(target, name) for name in FIELDS}


def create_restore_target(*, by: User | Actor | str, **fields: Any) -> RestoreTarget:
    """Register a restore target (audited as RESTORE_TARGET_CREATED)."""
    actor = _check(by)
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise BackupError("invalid", f"Unknown restore target fields: {', '.join(sorted(unknown))}")
    target = RestoreTarget(**fields, created_by=actor.label)
    _validated(target)
    with transaction.atomic():
        target.save()
        record(
            AuditEventType.RESTORE_TARGET_CREATED,
            actor=actor,
            subject=target,
            details={"revision": target.revision, **_values(target)},
        )
    return target


def update_restore_target(
    target: RestoreTarget | int, *, by: User | Actor | str, **changes: Any
) -> RestoreTarget:
    """Change a registered target (audited as RESTORE_TARGET_UPDATED with old and new values).

    No change, no write: calling it twice with the same values is safe.
    """
    actor = _check(by)
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise BackupError("invalid", f"Unknown restore target fields: {', '.join(sorted(unknown))}")
    pk = target.pk if isinstance(target, RestoreTarget) else target
    with transaction.atomic():
        current = RestoreTarget.objects.select_for_update().filter(pk=pk).first()
        if current is None:
            raise BackupError("not_found", f"No restore target #{pk}.")
        before = _values(current)
        for name, value in changes.items():
            setattr(current, name, value)
        after = _values(current)
        diff = {k: [before[k], after[k]] for k in FIELDS if before[k] != after[k]}
        if not diff:
            return current
        _validated(current)
        current.revision = F("revision") + 1
        current.save()
        current.refresh_from_db()
        record(
            AuditEventType.RESTORE_TARGET_UPDATED,
            actor=actor,
            subject=current,
            details={"revision": current.revision, "changes": diff},
        )
    return current
