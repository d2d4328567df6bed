"""The keyed audit chain against an attacker who can write the table but has no key.

Each attack is carried out on PostgreSQL the way a database superuser (or the
table's owner) could: triggers disabled, rows edited, hashes recomputed.
"""

import hashlib
import hmac
import importlib
import os
import uuid
from datetime import UTC

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from portal import audit
from portal.audit import GENESIS_HASH, SEP, Actor, chain, compute_hash, keys, record, scan_chain
from portal.choices import AuditEventType
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db

K1 = "k1:" + "1" * 40
K2 = "k2:" + "2" * 40


@pytest.fixture(autouse=True)
def _keys_and_anchors(settings, tmp_path):
    settings.AUDIT_HMAC_KEYS = K1
    settings.AUDIT_ANCHOR_DIR = tmp_path / "anchors"


def _events(n: int, user=None) -> list[AuditEvent]:
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    for i in range(n):
        record(
            AuditEventType.HOST_ADDED,
            actor=user or Actor.system("test"),
            subject=("pra.host", i),
            details={"n": i, "note": "ünïcode", "f": 1.5},
        )
    return list(AuditEvent.objects.filter(id__gt=before).order_by("id"))


def _sql(sql: str, params=None) -> list:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE portal_auditevent DISABLE TRIGGER USER")
        cursor.execute(sql, params)
        rows = cursor.fetchall() if cursor.description else []
        cursor.execute("ALTER TABLE portal_auditevent ENABLE TRIGGER USER")
    return rows


def _first_problem() -> str:
    with pytest.raises(CommandError) as caught:
        call_command("audit_verify", no_anchor=True)
    return str(caught.value)


def _rewrite_from(event_id: int, mac) -> None:
    """Edit row ``event_id`` and recompute the chain from it on, with ``mac(content)``."""
    keyed, _ = chain._sql_parts()
    prev = AuditEvent.objects.filter(id__lt=event_id).order_by("-id").first()
    prev_hash = prev.hash if prev else GENESIS_HASH
    _sql("UPDATE portal_auditevent SET details = '{\"n\": 999}' WHERE id = %s", [event_id])
    for row in AuditEvent.objects.filter(id__gte=event_id).order_by("id"):
        _sql("UPDATE portal_auditevent SET prev_hash = %s WHERE id = %s", [prev_hash, row.pk])
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {keyed} FROM portal_auditevent WHERE id = %s", [row.pk])  # noqa: S608
            content = cursor.fetchone()[0]
        prev_hash = mac(content.encode())
        _sql("UPDATE portal_auditevent SET hash = %s WHERE id = %s", [prev_hash, row.pk])


def test_each_row_is_an_hmac_under_the_configured_key_over_the_documented_fields(operator):
    (event,) = _events(1, operator)
    assert event.key_id == "k1"
    with connection.cursor() as cursor:
        cursor.execute("SELECT details::text FROM portal_auditevent WHERE id = %s", [event.pk])
        details_text = cursor.fetchone()[0]
    micros = int(event.created.timestamp()) * 1_000_000 + event.created.microsecond
    fields = [event.prev_hash, "k1", str(micros), "HOST_ADDED", operator.username]
    fields += [str(operator.pk), "pra.host", "0"]
    content = SEP.join(fields) + "\n" + details_text
    expected = hmac.new(("1" * 40).encode(), content.encode(), hashlib.sha256).hexdigest()
    assert event.hash == expected
    # The same row is no longer valid under another key: the chain is keyed.
    assert hashlib.sha256(content.encode()).hexdigest() != event.hash
    call_command("audit_verify", no_anchor=True)


def test_an_edit_with_the_trigger_disabled_and_hashes_recomputed_without_the_key_is_caught():
    events = _events(4)
    target = events[1]
    # The attacker knows the algorithm, not the key: plain SHA-256, or HMAC under a guess.
    _rewrite_from(target.pk, lambda data: hashlib.sha256(data).hexdigest())
    assert _first_problem().startswith(
        f"audit chain broken at event #{target.pk}: content does not match its MAC"
    )


def test_a_chain_rewritten_from_row_n_under_a_guessed_key_is_caught_at_row_n():
    events = _events(5)
    guessed = audit.AuditKey("k1", b"not-the-key-" * 4, "attacker")
    _rewrite_from(events[2].pk, guessed.mac)
    report = scan_chain()
    assert report.problems[0].event_id == events[2].pk
    assert "does not match its MAC" in report.problems[0].reason
    # Every rewritten row is flagged, not only the first.
    assert [p.event_id for p in report.problems] == [e.pk for e in events[2:]]


def test_a_downgrade_to_unkeyed_legacy_rows_is_caught():
    events = _events(3)
    prev = AuditEvent.objects.filter(id__lt=events[1].pk).order_by("-id").first().hash
    for event in events[1:]:
        event.refresh_from_db()
        legacy = compute_hash(
            created=event.created.isoformat(),
            event_type=event.event_type,
            actor=event.actor,
            actor_user_id=event.actor_user_id,
            subject_type=event.subject_type,
            subject_id=event.subject_id,
            details=event.details,
            prev_hash=prev,
        )
        _sql(
            "UPDATE portal_auditevent SET key_id = '', prev_hash = %s, hash = %s WHERE id = %s",
            [prev, legacy, event.pk],
        )
        prev = legacy
    assert _first_problem().startswith(
        f"audit chain broken at event #{events[1].pk}: unkeyed (legacy) row after the keyed"
    )


def test_a_row_inserted_by_a_role_without_the_key_is_caught():
    """INSERT stays allowed (the app role needs it), so a forged append must fail verify."""
    (last,) = _events(1)
    AuditEvent.objects.create(
        created=last.created,
        event_type="USER_CREATED",
        actor="mallory",
        prev_hash=last.hash,
        hash="f" * 64,
        key_id="k1",
    )
    forged = AuditEvent.objects.order_by("-id").first()
    assert _first_problem().startswith(
        f"audit chain broken at event #{forged.pk}: content does not match its MAC"
    )


def test_keys_rotate_newest_signs_older_still_verify_and_a_dropped_key_is_named(settings):
    old = _events(2)
    settings.AUDIT_HMAC_KEYS = f"{K2},{K1}"
    new = _events(2)
    assert {e.key_id for e in old} == {"k1"} and {e.key_id for e in new} == {"k2"}
    assert new[0].prev_hash == old[-1].hash
    call_command("audit_verify", no_anchor=True)
    settings.AUDIT_HMAC_KEYS = K2  # k1 retired too early
    problem = _first_problem()
    first_k1 = AuditEvent.objects.filter(key_id="k1").order_by("id").first()
    assert f"#{first_k1.pk}: signed with key id 'k1', which is not configured" in problem


def test_without_a_configured_key_it_signs_with_one_derived_from_secret_key(settings):
    settings.AUDIT_HMAC_KEYS = None
    settings.AUDIT_HMAC_KEY = None
    os.environ.pop("AUDIT_HMAC_KEYS", None)
    keys._env_keys.cache_clear()
    (event,) = _events(1)
    ring = audit.keyring()
    assert ring.signing.source == "SECRET_KEY" and event.key_id.startswith("sk-")
    material = audit.derive_key(settings.SECRET_KEY)
    assert ring.signing.mac(b"x") == hmac.new(material, b"x", hashlib.sha256).hexdigest()
    # Rows signed with the derived key keep verifying once a real key is configured.
    settings.AUDIT_HMAC_KEYS = K1
    _events(1)
    call_command("audit_verify", no_anchor=True)


def test_a_single_audit_hmac_key_gets_a_fingerprint_id(settings):
    settings.AUDIT_HMAC_KEYS = None
    settings.AUDIT_HMAC_KEY = "s" * 40
    (event,) = _events(1)
    assert event.key_id.startswith("k-") and len(event.key_id) == 10
    call_command("audit_verify", no_anchor=True)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("k1", "entry 1 is not id:secret"),
        ("k1:short", "shorter than 32 characters"),
        (f"bad id:{'x' * 40}", "key id 'bad id' must be"),
        (f"{K1},{K1}", "key id 'k1' appears twice"),
    ],
)
def test_a_bad_key_setting_is_a_clear_error_that_never_shows_the_secret(settings, keys, message):
    settings.AUDIT_HMAC_KEYS = keys
    with pytest.raises(ImproperlyConfigured, match=message) as caught:
        audit.keyring()
    assert "1" * 40 not in str(caught.value)
    errors = audit.check_audit_keys(None)
    assert [e.id for e in errors] == ["portal.E030"]
    with pytest.raises(CommandError, match="audit keys are misconfigured"):
        call_command("audit_verify")


def test_both_key_settings_at_once_are_refused(settings):
    settings.AUDIT_HMAC_KEY = "s" * 40
    with pytest.raises(ImproperlyConfigured, match="not both"):
        audit.keyring()


def test_the_deploy_check_warns_when_the_key_is_derived_from_secret_key(settings):
    settings.AUDIT_HMAC_KEYS = ""
    settings.AUDIT_HMAC_KEY = ""
    settings.DEBUG = False
    assert [w.id for w in audit.check_audit_keys(None)] == ["portal.W030"]
    settings.AUDIT_HMAC_KEYS = K1
    assert audit.check_audit_keys(None) == []


def _legacy_append(i: int) -> AuditEvent:
    """A row as the unkeyed SHA-256 chain wrote it before migration 0009."""
    prev = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    prev = prev or GENESIS_HASH
    created = timezone.now()
    details = {"i": i, "x": [1, "ü"], "f": 0.1}
    digest = compute_hash(
        created=created.astimezone(UTC).isoformat(), event_type="HOST_ADDED", actor="legacy",
        actor_user_id=None, subject_type="pra.host", subject_id=str(i), details=details,
        prev_hash=prev,
    )  # fmt: skip
    return AuditEvent.objects.create(
        created=created, event_type="HOST_ADDED", actor="legacy", subject_type="pra.host",
        subject_id=str(i), details=details, prev_hash=prev, hash=digest, key_id="",
    )  # fmt: skip


def test_legacy_rows_verify_as_a_prefix_and_the_keyed_chain_continues_from_them():
    _sql("DELETE FROM portal_auditevent")
    legacy = [_legacy_append(i) for i in range(4)]
    keyed = _events(2)
    assert keyed[0].prev_hash == legacy[-1].hash
    report = scan_chain()
    assert report.intact, report.problems
    assert (report.count, report.legacy) == (6, 4)
    call_command("audit_verify", no_anchor=True)
    # A legacy row edited (SHA-256 needs no key, but re-hashing it would change the
    # legacy head, which the first keyed row's MAC covers) is caught.
    _sql("UPDATE portal_auditevent SET actor = 'mallory' WHERE id = %s", [legacy[1].pk])
    assert _first_problem().startswith(
        f"audit chain broken at event #{legacy[1].pk}: content does not match its hash"
    )


def test_the_identity_fields_never_carry_the_field_separator():
    (event,) = [record(AuditEventType.HOST_ADDED, actor=f"a{SEP}b", subject=("x", f"1{SEP}2"))]
    assert SEP not in event.actor and SEP not in event.subject_id
    assert scan_chain().intact


def test_truncate_is_refused_to_the_tables_owner():
    """The application role owns the table unless audit_db_setup was run: TRUNCATE is
    refused by the statement trigger (a row trigger never sees TRUNCATE)."""
    _events(2)
    role = f"audit_owner_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE ROLE "{role}" NOLOGIN')
        cursor.execute(f'ALTER TABLE portal_auditevent OWNER TO "{role}"')
        cursor.execute(f'SET ROLE "{role}"')
        try:
            with pytest.raises(DatabaseError, match="append-only \\(TRUNCATE refused\\)"):
                with transaction.atomic():
                    cursor.execute("TRUNCATE portal_auditevent")
        finally:
            cursor.execute("RESET ROLE")
    assert AuditEvent.objects.count() >= 2


def test_truncate_is_refused_even_to_a_superuser_outside_test_databases():
    """The trigger lets only Django's test flush through (superuser, database test_*):
    here the same migration SQL on a database with another name refuses the superuser."""
    migration_0002 = importlib.import_module("portal.migrations.0002_roles_and_audit_append_only")
    migration_0009 = importlib.import_module("portal.migrations.0009_audit_keyed_chain")
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    params["dbname"] = "postgres"
    scratch = f"audit_scratch_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    try:
        with psycopg.connect(**{**params, "dbname": scratch}, autocommit=True) as db:
            db.execute("CREATE TABLE portal_auditevent (id int)")
            db.execute(migration_0002.PG_FORBID)
            db.execute(migration_0009.PG_FORBID_TRUNCATE)
            assert db.execute("SELECT current_setting('is_superuser')").fetchone() == ("on",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="TRUNCATE refused"):
                db.execute("TRUNCATE portal_auditevent")
    finally:
        with psycopg.connect(**params, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{scratch}"')


def test_verify_reports_every_field_it_checked(capsys):
    _events(3)
    call_command("audit_verify", no_anchor=True)
    out = capsys.readouterr().out
    assert "audit chain intact (" in out and "signing key k1 from AUDIT_HMAC_KEYS" in out
