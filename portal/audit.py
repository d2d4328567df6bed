"""The audit log's single write path, and its chain verification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, models, transaction
from django.utils import timezone

from portal.choices import AuditEventType
from portal.models import AuditEvent

GENESIS_HASH = "0" * 64
# Arbitrary constant: the advisory lock serialising audit writers on PostgreSQL.
_AUDIT_LOCK_KEY = 0x0A0D17


@dataclass(frozen=True)
class Actor:
    """Who did something: a person, or a named non-human identity."""

    label: str
    user: AbstractBaseUser | None = None

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(label=f"system:{name}")

    @classmethod
    def of(cls, who: Actor | AbstractBaseUser | str) -> Actor:
        if isinstance(who, Actor):
            return who
        if isinstance(who, str):
            return cls(label=who)
        return cls(label=who.get_username(), user=who)


def _canonical(value: Any) -> Any:
    """Normalise details to what a JSON column gives back, so hashes are stable."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def compute_hash(
    *,
    created: str,
    event_type: str,
    actor: str,
    actor_user_id: int | None,
    subject_type: str,
    subject_id: str,
    details: Any,
    prev_hash: str,
) -> str:
    payload = json.dumps(
        {
            "created": created,
            "event_type": event_type,
            "actor": actor,
            "actor_user_id": actor_user_id,
            "subject_type": subject_type,
            "subject_id": subject_id,
            "details": details,
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _row_hash(event: AuditEvent) -> str:
    return compute_hash(
        created=event.created.astimezone(UTC).isoformat(),
        event_type=event.event_type,
        actor=event.actor,
        actor_user_id=event.actor_user_id,
        subject_type=event.subject_type,
        subject_id=event.subject_id,
        details=event.details,
        prev_hash=event.prev_hash,
    )


def subject_of(subject: models.Model | tuple[str, Any] | None) -> tuple[str, str]:
    if subject is None:
        return "", ""
    if isinstance(subject, tuple):
        return str(subject[0]), str(subject[1])
    return subject._meta.label_lower, str(subject.pk)


def record(
    event_type: AuditEventType,
    *,
    actor: Actor | AbstractBaseUser | str,
    subject: models.Model | tuple[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the audit log inside the caller's transaction.

    If the caller's transaction rolls back, the event goes with it; that is the
    point: the log says what happened, not what was attempted. Never pass
    secrets in ``details``.
    """
    who = Actor.of(actor)
    subject_type, subject_id = subject_of(subject)
    clean_details = _canonical(details or {})
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_KEY])
        prev = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        prev_hash = prev or GENESIS_HASH
        created = timezone.now()
        user_id = who.user.pk if who.user is not None else None
        event = AuditEvent(
            created=created,
            event_type=AuditEventType(event_type).value,
            actor=who.label[:150],
            actor_user_id=user_id,
            subject_type=subject_type,
            subject_id=subject_id,
            details=clean_details,
            prev_hash=prev_hash,
        )
        event.hash = _row_hash(event)
        event.save(force_insert=True)
    return event


@dataclass(frozen=True)
class ChainProblem:
    event_id: int
    reason: str


def verify_chain(batch_size: int = 2000) -> Iterator[ChainProblem]:
    """Yield every row whose hash or link does not match (first one first)."""
    expected_prev = GENESIS_HASH
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=batch_size):
        if event.prev_hash != expected_prev:
            yield ChainProblem(
                event.pk, "link to the previous row broken (row removed or reordered)"
            )
        elif _row_hash(event) != event.hash:
            yield ChainProblem(event.pk, "content does not match its hash (row was modified)")
        expected_prev = event.hash
