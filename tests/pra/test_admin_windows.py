"""The maintenance-window and change-freeze admin pages, through Django's test client on
real PostgreSQL: every write goes through ``pra.windows`` (one audit event each), a
refusal is a page saying why with nothing written, and only administrators edit.

``pra.windows`` never refuses a delete an administrator may make (the admin's own
permission check comes first), so the delete tests check the single audit event and the
page instead of a refused delete."""

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from backups.choices import SourceKind
from portal.models import AuditEvent
from pra import windows
from pra.models import ChangeFreeze, MaintenanceWindow
from tests.factories import make_source

pytestmark = pytest.mark.django_db


def _events(prefix: str) -> list[str]:
    return list(
        AuditEvent.objects.filter(event_type__startswith=prefix)
        .order_by("id")
        .values_list("event_type", flat=True)
    )


def _window_form(**fields) -> dict:
    return {
        "name": "sunday-night",
        "description": "",
        "cron": "",
        "weekday": "6",
        "start_time": "02:00",
        "duration_minutes": "120",
        "timezone": "Europe/Paris",
        "host_tag": "",
        "enabled": "on",
    } | fields


def _freeze_form(**fields) -> dict:
    starts = timezone.now() + timedelta(days=1)
    ends = starts + timedelta(days=2)
    return {
        "reason": "year-end change freeze",
        "starts_at_0": f"{starts:%Y-%m-%d}",
        "starts_at_1": "00:00:00",
        "ends_at_0": f"{ends:%Y-%m-%d}",
        "ends_at_1": "00:00:00",
    } | fields


def _page(response) -> str:
    return response.content.decode()


def test_a_window_added_changed_and_deleted_in_the_admin_writes_one_event_each(client, admin_user):
    cache = make_source("cache", SourceKind.REDIS, dsn="redis://127.0.0.1:6399")
    client.force_login(admin_user)

    response = client.post(
        reverse("admin:pra_maintenancewindow_add"), _window_form(backup_sources=[cache.pk])
    )
    assert response.status_code == 302, _page(response)[-2000:]
    window = MaintenanceWindow.objects.get()
    assert list(window.backup_sources.all()) == [cache]  # the m2m went to save_window
    [created] = AuditEvent.objects.filter(event_type="WINDOW_CREATED")
    assert created.details["changes"]["backup_sources"] == ["cache"]
    assert created.details["changes"]["timezone"] == "Europe/Paris"
    assert created.actor == admin_user.get_username()

    url = reverse("admin:pra_maintenancewindow_change", args=[window.pk])
    response = client.post(url, _window_form(duration_minutes="90", backup_sources=[cache.pk]))
    assert response.status_code == 302, _page(response)[-2000:]
    [updated] = AuditEvent.objects.filter(event_type="WINDOW_UPDATED")
    assert updated.details["changes"] == {"duration_minutes": 90}  # sources unchanged
    window.refresh_from_db()
    assert window.duration_minutes == 90 and list(window.backup_sources.all()) == [cache]

    response = client.post(url, _window_form(duration_minutes="90"))  # sources cleared
    assert response.status_code == 302, _page(response)[-2000:]
    assert not window.backup_sources.exists()
    assert AuditEvent.objects.filter(event_type="WINDOW_UPDATED").count() == 2

    delete_url = reverse("admin:pra_maintenancewindow_delete", args=[window.pk])
    response = client.post(delete_url, {"post": "yes"})
    assert response.status_code == 302, _page(response)[-2000:]
    assert not MaintenanceWindow.objects.exists()
    assert AuditEvent.objects.filter(event_type="WINDOW_DELETED").count() == 1
    assert _events("WINDOW_") == ["WINDOW_CREATED", "WINDOW_UPDATED", "WINDOW_UPDATED",
                                  "WINDOW_DELETED"]  # fmt: skip
    assert not LogEntry.objects.exists()


def test_a_freeze_added_changed_and_deleted_in_the_admin_writes_one_event_each(client, admin_user):
    client.force_login(admin_user)
    response = client.post(reverse("admin:pra_changefreeze_add"), _freeze_form())
    assert response.status_code == 302, _page(response)[-2000:]
    freeze = ChangeFreeze.objects.get()
    assert AuditEvent.objects.filter(event_type="FREEZE_CREATED").count() == 1
    assert freeze.created_by == admin_user.get_username()

    url = reverse("admin:pra_changefreeze_change", args=[freeze.pk])
    response = client.post(url, _freeze_form(reason="year-end change freeze, extended"))
    assert response.status_code == 302, _page(response)[-2000:]
    [updated] = AuditEvent.objects.filter(event_type="FREEZE_UPDATED")
    assert updated.details["changes"] == {"reason": "year-end change freeze, extended"}

    response = client.post(
        reverse("admin:pra_changefreeze_delete", args=[freeze.pk]), {"post": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert not ChangeFreeze.objects.exists()
    assert AuditEvent.objects.filter(event_type="FREEZE_DELETED").count() == 1
    assert _events("FREEZE_") == ["FREEZE_CREATED", "FREEZE_UPDATED", "FREEZE_DELETED"]
    assert not LogEntry.objects.exists()


def test_a_freeze_add_pra_windows_refuses_shows_why_and_writes_nothing(client, admin_user):
    """The form takes any non-empty reason; save_freeze wants at least 5 characters."""
    client.force_login(admin_user)
    url = reverse("admin:pra_changefreeze_add")
    response = client.post(url, _freeze_form(reason="tbd"), follow=True)
    assert response.status_code == 200
    page = _page(response)
    assert "Not saved: reason: say why (at least 5 characters)." in page
    assert "was added successfully" not in page
    assert response.redirect_chain == [(url, 302)]  # back on the add page
    assert not ChangeFreeze.objects.exists()
    assert _events("FREEZE_") == []


def test_a_refused_freeze_change_keeps_the_row_and_writes_no_event(client, admin_user):
    freeze = windows.save_freeze(
        None,
        by=admin_user,
        reason="year-end change freeze",
        starts_at=timezone.now() + timedelta(days=1),
        ends_at=timezone.now() + timedelta(days=3),
    )
    client.force_login(admin_user)
    url = reverse("admin:pra_changefreeze_change", args=[freeze.pk])
    response = client.post(url, _freeze_form(reason="a   b c"), follow=True)  # "a b c": 5
    assert response.status_code == 200
    response = client.post(url, _freeze_form(reason="ab    c"), follow=True)  # "ab c": 4
    page = _page(response)
    assert "Not saved: reason: say why" in page and "was changed successfully" not in page
    freeze.refresh_from_db()
    assert freeze.reason == "a b c"
    assert _events("FREEZE_") == ["FREEZE_CREATED", "FREEZE_UPDATED"]


def test_an_invalid_window_is_refused_with_no_row_and_no_event(client, admin_user):
    """Bad cron and time zone are caught by the form (the model's validation), before
    pra.windows: the page shows the errors and nothing is written."""
    client.force_login(admin_user)
    url = reverse("admin:pra_maintenancewindow_add")
    for bad in (
        {"timezone": "Mars/Olympus"},
        {"cron": "every sunday", "weekday": "", "start_time": ""},
        {"duration_minutes": "1"},
    ):
        response = client.post(url, _window_form(**bad))
        assert response.status_code == 200
        assert "Please correct the error" in _page(response)
    assert not MaintenanceWindow.objects.exists()
    assert _events("WINDOW_") == []


def test_an_operator_may_not_add_change_or_delete_windows_or_freezes(client, admin_user, operator):
    opens = (timezone.now() + timedelta(hours=1)).replace(second=0, microsecond=0)
    window = windows.save_window(None, by=admin_user, name="sunday-night", weekday=6,
                                 start_time=opens.time(), duration_minutes=60)  # fmt: skip
    freeze = windows.save_freeze(None, by=admin_user, reason="year-end change freeze",
                                 starts_at=opens, ends_at=opens + timedelta(days=1))  # fmt: skip
    before = AuditEvent.objects.count()
    client.force_login(operator)
    for model, obj, form in (
        ("maintenancewindow", window, _window_form(name="mine")),
        ("changefreeze", freeze, _freeze_form(reason="operator freeze")),
    ):
        add = reverse(f"admin:pra_{model}_add")
        assert client.get(add).status_code == 403
        assert client.post(add, form).status_code == 403
        change = reverse(f"admin:pra_{model}_change", args=[obj.pk])
        assert client.post(change, form).status_code == 403
        delete = reverse(f"admin:pra_{model}_delete", args=[obj.pk])
        assert client.get(delete).status_code == 403
        assert client.post(delete, {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.count() == before
    window.refresh_from_db()
    freeze.refresh_from_db()
    assert (window.name, freeze.reason) == ("sunday-night", "year-end change freeze")
    assert MaintenanceWindow.objects.count() == ChangeFreeze.objects.count() == 1


def test_a_viewer_reads_the_pages_without_edit_buttons(client, admin_user, viewer):
    window = windows.save_window(None, by=admin_user, name="weekly", cron="0 2 * * 0",
                                 duration_minutes=60)  # fmt: skip
    client.force_login(viewer)
    assert client.get(reverse("admin:pra_maintenancewindow_changelist")).status_code == 200
    response = client.get(reverse("admin:pra_maintenancewindow_change", args=[window.pk]))
    assert response.status_code == 200
    assert 'name="_save"' not in _page(response)
    assert client.get(reverse("admin:pra_changefreeze_changelist")).status_code == 200
