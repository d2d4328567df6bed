"""The audit log's single write path, its keyed hash chain, anchors and verification.

Each row stores ``prev_hash`` (the previous row's ``hash``) and ``hash``, an
HMAC-SHA256 over the row's content with a key from settings (never from the
database); ``key_id`` names the key, so keys rotate: the first configured key
signs, the others still verify. Rows from before keyed chains (empty
``key_id``, plain SHA-256) verify as "legacy", only as a prefix of the log.

Whoever can write the table but does not hold the key cannot make an edited,
rewritten or re-ordered row verify. Deleting the newest rows, or the whole
table, leaves a shorter chain that is intact: anchors catch that. An anchor is
a line ``{id, hash, count, time}`` (itself HMAC'ed and chained to the line
before) appended to a file outside the database by the periodic job and by
``audit_verify``; every later verification checks that each anchored event is
still there, with the same hash and the same number of events up to it.

The MAC covers the database's own canonical text of ``details`` (PostgreSQL's
``jsonb::text``; SQLite's ``json()``), asked for in the query that reads the
previous hash, so verifying is one streamed query and one HMAC per row, with no
JSON decoding in Python. docs/security.md has the whole model.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import queue
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, models, transaction
from django.utils import timezone

from portal.choices import AuditEventType
from portal.lib.env import env_int, env_path, env_secret
from portal.models import AuditEvent

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Arbitrary constant: the advisory lock serialising audit writers on PostgreSQL.
_AUDIT_LOCK_KEY = 0x0A0D17
# Separates the fields of a keyed row's MAC input. record() keeps it out of the
# identity fields, and the databases' JSON text escapes every control character,
# so the input splits into fields one way only.
SEP = "\x1f"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)


# --- Keys ------------------------------------------------------------------------------

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
    keys = getattr(settings, "AUDIT_HMAC_KEYS", None)
    key = getattr(settings, "AUDIT_HMAC_KEY", None)
    if keys is None and key is None:
        keys, key = _env_keys()
    if isinstance(keys, Mapping):
        keys = tuple(keys.items())
    return (
        keys or "",
        key or "",
        settings.SECRET_KEY,
        tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ())),
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


# --- Writing ---------------------------------------------------------------------------


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


# --- Anchors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Anchor:
    """One line of the anchor file: the chain head at a moment, HMAC'ed."""

    line: int
    event_id: int
    hash: str
    count: int
    time: str
    key_id: str
    prev: str
    mac: str

    def describe(self) -> str:
        return f"event #{self.event_id}, {self.count} events, {self.time}"


def anchor_dir() -> Path:
    configured = getattr(settings, "AUDIT_ANCHOR_DIR", None)
    if configured:
        return Path(configured)
    return env_path("AUDIT_ANCHOR_DIR", Path(settings.VAR_DIR) / "audit-anchors")


def anchor_interval() -> int:
    """Seconds between periodic anchors (AUDIT_ANCHOR_INTERVAL, default 300)."""
    configured = getattr(settings, "AUDIT_ANCHOR_INTERVAL", None)
    if configured:
        return int(configured)
    return env_int("AUDIT_ANCHOR_INTERVAL", 300, minimum=30, maximum=86400)


# With no new events, an anchor is still written this often, so its age in /metrics
# tells a stopped anchor job from a quiet portal.
ANCHOR_HEARTBEAT = timedelta(hours=1)


def anchor_file() -> Path:
    """One file per database, so two databases never share (and fail) each other's anchors."""
    name = Path(str(connection.settings_dict["NAME"])).name
    return anchor_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name) or 'default'}.anchors"


def _anchor_mac_input(fields: dict[str, Any]) -> bytes:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b"portal audit anchor\n" + body.encode()


@dataclass
class AnchorFile:
    path: Path
    anchors: list[Anchor] = field(default_factory=list)
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def last(self) -> Anchor | None:
        return self.anchors[-1] if self.anchors else None


def read_anchors(path: Path | None = None, ring: Keyring | None = None) -> AnchorFile:
    """Parse and check every anchor line: MAC, link to the line before, order."""
    path = path or anchor_file()
    ring = ring or keyring()
    result = AnchorFile(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return result
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"the anchor file is unreadable ({getattr(exc, 'strerror', None) or exc})"
        result.problems.append(ChainProblem(None, reason, anchor=str(path)))
        return result
    prev: Anchor | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue

        def bad(reason: str, number: int = number) -> None:
            result.problems.append(ChainProblem(None, reason, anchor=f"{path}:{number}"))

        try:
            data = json.loads(raw)
            fields = {k: data[k] for k in ("v", "id", "hash", "count", "time", "key_id", "prev")}
            mac = data["mac"]
            anchor = Anchor(
                number, int(fields["id"]), str(fields["hash"]), int(fields["count"]),
                str(fields["time"]), str(fields["key_id"]), str(fields["prev"]), str(mac),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            bad("damaged line (not an anchor)")
            continue
        key = ring.by_id.get(anchor.key_id)
        if key is None:
            bad(f"signed with key id {anchor.key_id!r}, which is not configured")
            continue
        if not hmac.compare_digest(key.mac(_anchor_mac_input(fields)), anchor.mac):
            bad("MAC does not match (line edited, or written without the key)")
            continue
        if anchor.prev != (prev.mac if prev else ""):
            bad("does not follow the line before it (anchor lines removed or reordered)")
        elif prev and (anchor.event_id < prev.event_id or anchor.count < prev.count):
            bad("goes backwards (lower event id or count than the line before it)")
        result.anchors.append(anchor)
        prev = anchor
    return result


def _last_anchor_line(path: Path) -> str | None:
    """The file's last line, read from its end (metrics must not read the whole file)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            lines = [line for line in f.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return None
    return lines[-1].decode("utf-8", "replace") if lines else None


def last_trusted_anchor(path: Path | None = None) -> Anchor | None:
    """The newest anchor line if its MAC checks out (used by /metrics)."""
    path = path or anchor_file()
    raw = _last_anchor_line(path)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        fields = {k: data[k] for k in ("v", "id", "hash", "count", "time", "key_id", "prev")}
        key = keyring().by_id.get(str(data["key_id"]))
        if key is None or not hmac.compare_digest(key.mac(_anchor_mac_input(fields)), data["mac"]):
            return None
        return Anchor(
            0, int(data["id"]), str(data["hash"]), int(data["count"]), str(data["time"]),
            str(data["key_id"]), str(data["prev"]), str(data["mac"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None


class AuditChainBroken(Exception):
    def __init__(self, problem: ChainProblem) -> None:
        super().__init__(problem.message())
        self.problem = problem


def write_anchor(report: ChainReport | None = None) -> Anchor | None:
    """Append the verified chain head to the anchor file; None if the log is empty.

    Without ``report``, first verifies everything since the last anchor (and that
    the last anchor still matches). Refuses, raising AuditChainBroken, to anchor
    a chain that does not verify. Skips the write if the last line already names
    this head and is younger than ANCHOR_HEARTBEAT.
    """
    path = anchor_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time: the lines form a chain
        ring = keyring()
        existing = read_anchors(path, ring)
        if report is None:
            report = scan_chain(from_anchor=True, anchors=existing, ring=ring)
        if report.problems:
            raise AuditChainBroken(report.problems[0])
        last = existing.last
        if report.head_id is None:
            return None
        if last is not None and last.event_id > report.head_id:
            return last  # someone anchored a newer head meanwhile
        now = timezone.now()
        if (
            last is not None
            and last.event_id == report.head_id
            and now - datetime.fromisoformat(last.time) < ANCHOR_HEARTBEAT
        ):
            return last
        fields = {
            "v": 1,
            "id": report.head_id,
            "hash": report.head_hash,
            "count": report.count,
            "time": now.astimezone(UTC).isoformat(timespec="seconds"),
            "key_id": ring.signing.id,
            "prev": last.mac if last else "",
        }
        mac = ring.signing.mac(_anchor_mac_input(fields))
        line = json.dumps({**fields, "mac": mac}, sort_keys=True, separators=(",", ":"))
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
        number = (existing.anchors[-1].line + 1) if existing.anchors else 1
        return Anchor(
            number, report.head_id, report.head_hash, report.count, fields["time"],
            ring.signing.id, fields["prev"], mac,
        )  # fmt: skip
    finally:
        os.close(fd)


def periodic_anchor() -> dict[str, Any]:
    """RQ job (portal/cron.py, queue "control"): verify since the last anchor, append one.

    A chain that no longer verifies is logged as an error and fails the job
    (visible in the failed-job registry); the anchor age in /metrics then grows.
    """
    try:
        anchor = write_anchor()
    except AuditChainBroken as exc:
        log.error("audit chain does not verify, no anchor written: %s", exc)
        raise
    if anchor is None:
        return {"anchored": None}
    return {"anchored": anchor.event_id, "count": anchor.count, "time": anchor.time}


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
    start_id, expected_prev, position = 0, GENESIS_HASH, 0
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


# --- System checks ---------------------------------------------------------------------


@register(Tags.security)
def check_audit_keys(app_configs, **kwargs):
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


@register()
def check_anchor_dir(app_configs, **kwargs):
    directory = anchor_dir()
    parent = directory if directory.exists() else directory.parent
    if parent.exists() and not os.access(parent, os.W_OK):
        return [
            Error(
                f"AUDIT_ANCHOR_DIR {directory} is not writable: audit anchors cannot be written.",
                hint="Set AUDIT_ANCHOR_DIR to a directory the portal can append to.",
                id="portal.E031",
            )
        ]
    return []
