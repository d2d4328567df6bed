"""The audit log's single write path, and the verification of its keyed chain.

Each row stores ``prev_hash`` (the previous row's ``hash``), ``key_id`` and
``hash``, an HMAC-SHA256 over the row's content (``mac_input``) with the key
named by ``key_id``. The MAC covers the database's own canonical text of
``details`` (PostgreSQL's ``jsonb::text``; SQLite's ``json()``), asked for in the
query that reads the previous hash, so verifying is one streamed query and one
HMAC per row, with no JSON decoding in Python. Rows from before keyed chains
(empty ``key_id``, plain SHA-256) verify as "legacy", only as a prefix.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, models, transaction
from django.utils import timezone

from portal.audit.anchors import Anchor, AnchorFile, read_anchors
from portal.audit.keys import Keyring, keyring
from portal.choices import AuditEventType
from portal.models import AuditEvent

GENESIS_HASH = "0" * 64
# Arbitrary constant: the advisory lock serialising audit writers on PostgreSQL.
_AUDIT_LOCK_KEY = 0x0A0D17
# Separates the fields of a keyed row's MAC input. record() keeps it out of the
# identity fields, and the databases' JSON text escapes every control character,
# so the input splits into fields one way only.
SEP = "\x1f"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Actor:
    """Who did something: a person, or a named non-human identity."""

    label: str
    user: User | None = None

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(label=f"system:{name}")

    @classmethod
    def of(cls, who: Actor | User | str) -> Actor:
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
    """The legacy (pre-HMAC) row hash: plain SHA-256, checked for old rows only."""
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


def mac_input(
    *,
    prev_hash: str,
    key_id: str,
    created: str,
    event_type: str,
    actor: str,
    actor_user_id: int | None,
    subject_type: str,
    subject_id: str,
    details_text: str,
) -> str:
    """What a keyed row's HMAC covers; the verify query builds the same text in SQL.

    ``created`` is microseconds since the epoch on PostgreSQL (the stored text on
    SQLite); ``details_text`` is the database's canonical JSON text.
    """
    user = "" if actor_user_id is None else str(actor_user_id)
    head = (prev_hash, key_id, created, event_type, actor, user, subject_type, subject_id)
    return SEP.join(head) + "\n" + details_text


def subject_of(subject: models.Model | tuple[str, Any] | None) -> tuple[str, str]:
    if subject is None:
        return "", ""
    if isinstance(subject, tuple):
        return str(subject[0]), str(subject[1])
    return subject._meta.label_lower, str(subject.pk)


def _field_text(value: str) -> str:
    # The field separator never appears inside a field (see SEP).
    return value.replace(SEP, "\ufffd") if SEP in value else value


def _created_text(created: datetime) -> str:
    if connection.vendor == "postgresql":
        return str((created - _EPOCH) // _ONE_MICROSECOND)
    return str(connection.ops.adapt_datetimefield_value(created))


_PREV_AND_DETAILS_SQL = {
    # After the advisory lock, so this statement's snapshot sees the last writer's row.
    "postgresql": "SELECT (SELECT hash FROM portal_auditevent ORDER BY id DESC LIMIT 1), "
    "%s::jsonb::text",
    "sqlite": "SELECT (SELECT hash FROM portal_auditevent ORDER BY id DESC LIMIT 1), json(%s)",
}


def record(
    event_type: str,
    *,
    actor: Actor | User | str,
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
    subject_type, subject_id = _field_text(subject_type), _field_text(subject_id)
    label = _field_text(who.label[:150])
    clean_details = _canonical(details or {})
    key = keyring().signing
    kind = AuditEventType(event_type).value
    user_id = who.user.pk if who.user is not None else None
    with transaction.atomic():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_KEY])
            cursor.execute(_PREV_AND_DETAILS_SQL[connection.vendor], [json.dumps(clean_details)])
            prev, details_text = cursor.fetchone()
        prev_hash = prev or GENESIS_HASH
        created = timezone.now()
        event = AuditEvent(
            created=created,
            event_type=kind,
            actor=label,
            actor_user_id=user_id,
            subject_type=subject_type,
            subject_id=subject_id,
            details=clean_details,
            prev_hash=prev_hash,
            key_id=key.id,
        )
        content = mac_input(
            prev_hash=prev_hash,
            key_id=key.id,
            created=_created_text(created),
            event_type=kind,
            actor=label,
            actor_user_id=user_id,
            subject_type=subject_type,
            subject_id=subject_id,
            details_text=details_text,
        )
        event.hash = key.mac(content.encode())
        event.save(force_insert=True)
    return event


# --- Verification ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChainProblem:
    event_id: int | None
    reason: str
    anchor: str | None = None  # "path:line" when an anchor no longer matches

    def message(self) -> str:
        if self.anchor:
            return f"audit anchor {self.anchor} no longer matches: {self.reason}"
        return f"audit chain broken at event #{self.event_id}: {self.reason}"


@dataclass
class ChainReport:
    count: int = 0
    legacy: int = 0
    head_id: int | None = None
    head_hash: str | None = None
    anchors_checked: int = 0
    from_anchor: Anchor | None = None
    anchor_path: Path | None = None
    problems: list[ChainProblem] = field(default_factory=list)
    key_ids: set[str] = field(default_factory=set)

    @property
    def intact(self) -> bool:
        return not self.problems


_CHUNK = 2_000  # measured: smaller batches overlap better with the fetch thread
_MAX_PROBLEMS = 100


def _sql_parts() -> tuple[str, str]:
    """(keyed MAC input, legacy fields) as SQL expressions over a row, per vendor."""
    if connection.vendor == "postgresql":
        created = "(extract(epoch FROM created) * 1000000)::bigint"
        s = "chr(31)"
        # || rather than concat(): several times faster per row (concat is variadic "any").
        keyed = (
            f"prev_hash || {s} || key_id || {s} || {created}::text || {s} || event_type || {s} "
            f"|| actor || {s} || coalesce(actor_user_id::text, '') || {s} || subject_type || {s} "
            "|| subject_id || chr(10) || details::text"
        )
        legacy = (
            f"json_build_array(prev_hash, {created}, event_type, actor, actor_user_id, "
            "subject_type, subject_id)::text || chr(10) || details::text"
        )
        return keyed, legacy
    if connection.vendor == "sqlite":
        s = "char(31)"
        keyed = (
            f"prev_hash || {s} || key_id || {s} || created || {s} || event_type || {s} || actor"
            f" || {s} || ifnull(actor_user_id, '') || {s} || subject_type || {s} || subject_id"
            " || char(10) || json(details)"
        )
        legacy = (
            "json_array(prev_hash, created, event_type, actor, actor_user_id, subject_type, "
            "subject_id) || char(10) || json(details)"
        )
        return keyed, legacy
    raise NotImplementedError(f"audit chains need PostgreSQL or SQLite, not {connection.vendor}")


def _legacy_created(value: Any) -> str:
    if isinstance(value, int):  # PostgreSQL: microseconds since the epoch
        moment = _EPOCH + timedelta(microseconds=value)
    else:  # SQLite: the stored UTC text
        moment = datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _legacy_problem(content: str, stored_hash: str, expected_prev: str | None) -> str | None:
    head, _, details_text = content.partition("\n")
    prev, created, event_type, actor, user_id, subject_type, subject_id = json.loads(head)
    if expected_prev is not None and prev != expected_prev:
        return "link to the previous row broken (row removed or reordered)"
    computed = compute_hash(
        created=_legacy_created(created),
        event_type=event_type,
        actor=actor,
        actor_user_id=user_id,
        subject_type=subject_type,
        subject_id=subject_id,
        details=json.loads(details_text),
        prev_hash=prev,
    )
    if computed != stored_hash:
        return "content does not match its hash (legacy row modified)"
    return None


def scan_chain(
    *,
    from_anchor: bool = False,
    anchors: AnchorFile | None = None,
    ring: Keyring | None = None,
    batch_size: int = _CHUNK,
    max_problems: int = _MAX_PROBLEMS,
) -> ChainReport:
    """Verify the chain and every anchor against it, in one streamed query.

    ``from_anchor``: start at the last anchor whose line checks out, trusting what
    it vouches for (its event's hash and the number of events up to it), and
    verify only what follows: the periodic job's incremental check.
    """
    ring = ring or keyring()
    anchors = anchors if anchors is not None else read_anchors(ring=ring)
    report = ChainReport(anchor_path=anchors.path, problems=list(anchors.problems))
    pending = sorted(anchors.anchors, key=lambda a: a.event_id)
    start_id, position = 0, 0
    expected_prev: str | None = GENESIS_HASH
    with transaction.atomic():  # a server-side cursor lives in a transaction
        if from_anchor and pending:
            start = pending[-1]
            report.from_anchor = start
            pending = [start]
            start_id, expected_prev = start.event_id, None  # its own link is vouched for
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM portal_auditevent WHERE id < %s", [start_id])
                position = cursor.fetchone()[0]
        keyed_sql, legacy_sql = _sql_parts()
        # Constant SQL: nothing from outside is formatted in.
        row = f"CASE WHEN key_id = '' THEN {legacy_sql} ELSE {keyed_sql} END"
        sql = f"SELECT id, key_id, hash, {row} FROM portal_auditevent WHERE id >= %s ORDER BY id"  # noqa: S608
        cursor = connection.chunked_cursor()
        try:
            cursor.execute(sql, [start_id])
            _stream(
                cursor, report, ring, pending, expected_prev, position, batch_size, max_problems
            )
        finally:
            cursor.close()
    return report


def _batches(cursor, size: int) -> Iterator[list]:
    """Rows in batches; on PostgreSQL the next batch is fetched while this one is hashed.

    psycopg waits for the server without the GIL, so the server building rows and
    Python hashing them overlap: the two cores both work.
    """
    if connection.vendor != "postgresql":
        while rows := cursor.fetchmany(size):
            yield rows
        return
    raw = getattr(cursor, "cursor", cursor)  # psycopg's own cursor, used by one thread only
    batches: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def pump() -> None:
        try:
            while not stop.is_set():
                rows = raw.fetchmany(size)
                batches.put(rows)
                if not rows:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            batches.put(exc)

    thread = threading.Thread(target=pump, name="audit-verify-fetch", daemon=True)
    thread.start()
    try:
        while True:
            item = batches.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a pump waiting to put, then let it finish
            try:
                batches.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def _stream(cursor, report, ring, pending, expected_prev, position, batch_size, max_problems):
    """The hot loop: per keyed row, one HMAC (pads pre-hashed, inlined) and two comparisons."""
    problems = report.problems
    anchor_index, next_anchor = 0, (pending[0].event_id if pending else math.inf)
    current_kid, inner, outer = None, None, None
    keyed_started = False
    head_id, head_hash = None, None
    sep = SEP.encode()
    prefix = None if expected_prev is None else expected_prev.encode() + sep
    legacy = 0
    for rows in _batches(cursor, batch_size):
        for event_id, key_id, stored_hash, content in rows:
            position += 1
            if key_id:
                if key_id != current_kid:
                    current_kid = key_id
                    key = ring.by_id.get(key_id)
                    inner, outer = (key._inner.copy, key._outer.copy) if key else (None, None)
                    report.key_ids.add(key_id)
                keyed_started = True
                data = content.encode()
                if prefix is not None and not data.startswith(prefix):
                    problems.append(ChainProblem(
                        event_id, "link to the previous row broken (row removed or reordered)"
                    ))  # fmt: skip
                elif inner is None:
                    problems.append(ChainProblem(
                        event_id, f"signed with key id {key_id!r}, which is not configured "
                        "(AUDIT_HMAC_KEYS must keep every key that signed rows)",
                    ))  # fmt: skip
                else:
                    mac = inner()
                    mac.update(data)
                    out = outer()
                    out.update(mac.digest())
                    if out.hexdigest() != stored_hash:
                        problems.append(ChainProblem(
                            event_id, "content does not match its MAC (row modified, or "
                            "rewritten without the key)",
                        ))  # fmt: skip
            else:
                legacy += 1
                if keyed_started:
                    problems.append(ChainProblem(
                        event_id, "unkeyed (legacy) row after the keyed chain began: "
                        "rewritten without the key",
                    ))  # fmt: skip
                else:
                    reason = _legacy_problem(content, stored_hash, expected_prev)
                    if reason:
                        problems.append(ChainProblem(event_id, reason))
                expected_prev = stored_hash
            prefix = stored_hash.encode() + sep
            head_id = event_id
            if event_id >= next_anchor:
                while event_id >= next_anchor:
                    _check_anchor(pending[anchor_index], event_id, stored_hash, position, report)
                    anchor_index += 1
                    next_anchor = (
                        pending[anchor_index].event_id if anchor_index < len(pending) else math.inf
                    )
        if len(problems) >= max_problems:
            break
    if head_id is not None:
        head_hash = stored_hash
    report.count, report.legacy = position, legacy
    report.head_id, report.head_hash = head_id, head_hash
    if len(problems) < max_problems:
        for anchor in pending[anchor_index:]:
            report.anchors_checked += 1
            where = f"the log now ends at event #{head_id} ({position} events)"
            if head_id is None:
                where = "the audit table is empty"
            problems.append(ChainProblem(
                None, f"it names {anchor.describe()}; {where}: events deleted from the end, "
                "or the table truncated", anchor=f"{report.anchor_path}:{anchor.line}",
            ))  # fmt: skip
    del problems[max_problems:]


def _check_anchor(anchor, event_id, stored_hash, position, report):
    report.anchors_checked += 1
    where = f"{report.anchor_path}:{anchor.line}"
    if event_id != anchor.event_id:
        reason = f"it names {anchor.describe()}, and that event is gone (deleted)"
    elif stored_hash != anchor.hash:
        reason = f"it names {anchor.describe()}, and that event's hash changed (rewritten)"
    elif position != anchor.count:
        reason = (
            f"it names {anchor.describe()}, and there are now {position} events up to it "
            "(events removed or inserted before it)"
        )
    else:
        return
    report.problems.append(ChainProblem(anchor.event_id, reason, anchor=where))


def verify_chain(batch_size: int = _CHUNK) -> Iterator[ChainProblem]:
    """Yield every problem found (first one first): rows, then anchors past the end."""
    yield from scan_chain(batch_size=batch_size).problems
