"""Kinds registry (``portal.kinds``): each app declares its own audit, live-event and
notification kinds; no database-level choices, so a new kind needs no migration.

Real: PostgreSQL, the migration graph, ``makemigrations --check``, the admin through
the Django test client.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, models
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from portal.audit import Actor, record
from portal.choices import AuditEventType, LiveEventKind, NotificationKind
from portal.kinds import AUDIT_EVENTS, NOTIFICATIONS, Vocabulary
from portal.live import LiveEvent
from portal.models import AuditEvent

#: The last portal migration whose fields still carried the full choice lists.
LAST_WITH_CHOICES = ("portal", "0014_backup_drill_events")


@AUDIT_EVENTS.register
class LateAuditEvents(models.TextChoices):
    """What a new app (or a new feature) adds, after every migration was written."""

    TEST_LATE_KIND = "TEST_LATE_KIND", "A kind added after the migrations"


@NOTIFICATIONS.register
class LateNotifications(models.TextChoices):
    TEST_LATE_NOTICE = "TEST_LATE_NOTICE", "A late notification kind"


def _choices_before(model: str, field: str) -> list[tuple[str, str]]:
    state = MigrationLoader(connection).project_state(LAST_WITH_CHOICES)
    return state.models["portal", model].fields[field].choices


@pytest.mark.django_db
def test_every_kind_stored_before_keeps_its_value_and_label():
    """The apps' registrations cover, value for value and label for label, what the
    portal's single choice lists held (so rows already stored read the same)."""
    before_audit = _choices_before("auditevent", "event_type")
    before_notify = _choices_before("notification", "kind")
    assert len(before_audit) > 50 and len(before_notify) > 10
    assert set(before_audit) <= set(AuditEventType.choices)
    assert set(before_notify) <= set(NotificationKind.choices)


@pytest.mark.django_db
def test_an_app_adds_a_kind_without_any_migration():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # SystemExit if not
    event = record(AuditEventType.TEST_LATE_KIND, actor=Actor.system("test"))
    assert AuditEvent.objects.get(pk=event.pk).event_type == "TEST_LATE_KIND"
    assert event.get_event_type_display() == "A kind added after the migrations"


@pytest.mark.django_db
def test_the_audit_admin_lists_filters_and_shows_labels_from_the_registry(client, admin_user):
    record(AuditEventType.TEST_LATE_KIND, actor=Actor.system("test"))
    record(AuditEventType.PRA_PROPOSED, actor=Actor.system("test"))
    client.force_login(admin_user)
    page = client.get("/admin/portal/auditevent/").content.decode()
    assert "A kind added after the migrations" in page  # column and filter entry
    assert "?event_type=PRA_PROPOSED" in page and "Action proposed" in page
    filtered = client.get("/admin/portal/auditevent/?event_type=TEST_LATE_KIND")
    assert filtered.status_code == 200
    assert list(filtered.context["cl"].queryset.values_list("event_type", flat=True)) == [
        "TEST_LATE_KIND"
    ]


@pytest.mark.django_db
def test_a_kind_no_app_declares_any_more_still_displays(client, admin_user):
    """A row from a release whose kind was since removed (written here with the ORM, as
    ``record`` refuses undeclared kinds): listed, filterable and shown by its value."""
    old = AuditEvent.objects.create(
        created=timezone.now(),
        event_type="RETIRED_KIND",
        actor="system:old-release",
        prev_hash="0" * 64,
        hash="e" * 64,
    )
    assert old.get_event_type_display() == "RETIRED_KIND"
    client.force_login(admin_user)
    listed = client.get("/admin/portal/auditevent/?event_type=RETIRED_KIND")
    assert listed.status_code == 200
    assert [e.pk for e in listed.context["cl"].queryset] == [old.pk]
    assert "RETIRED_KIND" in listed.content.decode()
    detail = client.get(f"/admin/portal/auditevent/{old.pk}/change/")
    assert detail.status_code == 200 and "RETIRED_KIND" in detail.content.decode()


@pytest.mark.django_db
def test_the_channel_form_offers_every_app_s_notification_kinds(client, admin_user):
    client.force_login(admin_user)
    page = client.get("/admin/portal/notificationchannel/add/").content.decode()
    for value in ("PRA_FAILED", "INCIDENT_OPENED", "BACKUP_STALE", "TEST_LATE_NOTICE"):
        assert f'value="{value}"' in page
    assert 'value="TEST"' not in page  # the test message is not a subscription


def test_a_registry_reads_like_the_enumeration_it_replaces():
    assert AuditEventType.PRA_PROPOSED == "PRA_PROPOSED"
    assert AuditEventType("PRA_PROPOSED").label == "Action proposed"
    assert "BACKUP_DELETED" in AuditEventType and "NOPE" not in AuditEventType
    assert NotificationKind.INCIDENT_OPENED in NotificationKind.values
    assert AuditEventType.label("NOPE") == "NOPE"
    with pytest.raises(ValueError, match="not a registered notification kind"):
        NotificationKind("NOPE")
    with pytest.raises(AttributeError, match="no audit event kind named NOPE"):
        _ = AuditEventType.NOPE


def test_a_live_event_of_an_unregistered_kind_is_refused():
    assert LiveEvent(kind=LiveEventKind.BACKUP_RUN, subject_type="s", subject_id="1").kind == (
        "backup.run"
    )
    with pytest.raises(ValueError, match="not a registered live event kind"):
        LiveEvent(kind="nope", subject_type="s", subject_id="1")


def test_two_apps_cannot_declare_one_value_differently():
    vocabulary = Vocabulary("example")

    class First(models.TextChoices):
        SHARED = "SHARED", "One meaning"

    class Second(models.TextChoices):
        SHARED = "SHARED", "Another meaning"

    class Renamed(models.TextChoices):
        SHARED = "OTHER", "Same name, another value"

    vocabulary.register(First)
    vocabulary.register(First)  # again: a no-op
    assert vocabulary.choices == [("SHARED", "One meaning")]
    with pytest.raises(ImproperlyConfigured, match="already declared"):
        vocabulary.register(Second)
    with pytest.raises(ImproperlyConfigured, match="already declared"):
        vocabulary.register(Renamed)
    assert vocabulary.choices == [("SHARED", "One meaning")]
