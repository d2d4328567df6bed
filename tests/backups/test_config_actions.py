"""Backup configuration goes through audited actions: sources (admin add and edit, code),
restore targets from the admin, and a manual backup request; one audit event each."""

import pytest
from django.urls import reverse

from backups import actions, restore_targets
from backups.choices import DEFAULT_KUBE_KINDS
from backups.models import BackupSource, RestoreTarget
from portal.choices import AuditEventType
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db


def events(kind: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=kind).order_by("id"))


def source_form(**fields):
    return {
        "name": "shop-db", "kind": "postgres", "enabled": "on", "schedule": "0 3 * * *",
        "transport": "direct", "stall_timeout": "", "dsn": "postgres://backup@db:5432",
        "pg_mode": "per_database", "databases": "shop", "password_env": "SHOP_DB_PASSWORD",
        "password_file": "", "kubeconfig": "", "kube_context": "", "kube_kinds": DEFAULT_KUBE_KINDS,
        "kube_namespaces": "", "kube_namespace": "", "kube_pod": "", "kube_container": "",
        "retention_days": "", "keep_weekly": 0, "keep_monthly": 0, "drill_target": "",
        "drill_schedule": "", "rto_target_seconds": "",
    } | fields  # fmt: skip


def test_adding_and_editing_a_source_in_the_admin_writes_one_event_each(client, admin_user):
    base = source_form()
    client.force_login(admin_user)
    response = client.post(reverse("admin:backups_backupsource_add"), base)
    assert response.status_code == 302, response.content.decode()[-2000:]
    source = BackupSource.objects.get(name="shop-db")
    [created] = events(AuditEventType.BACKUP_SOURCE_CHANGED)
    assert created.details["change"] == "created" and created.details["schedule"] == "0 3 * * *"
    url = reverse("admin:backups_backupsource_change", args=[source.pk])
    response = client.post(url, base | {"schedule": "30 4 * * *", "keep_weekly": 4})
    assert response.status_code == 302, response.content.decode()[-2000:]
    _, updated = events(AuditEventType.BACKUP_SOURCE_CHANGED)
    assert updated.actor == admin_user.username
    assert updated.details["changes"] == {
        "schedule": {"old": "0 3 * * *", "new": "30 4 * * *"},
        "keep_weekly": {"old": 0, "new": 4},
    }
    source.refresh_from_db()
    assert (source.schedule, source.keep_weekly) == ("30 4 * * *", 4)


def test_a_bad_source_change_is_refused_and_changes_nothing(client, admin_user, operator):
    source = actions.create_source(
        by=admin_user, name="cache", kind="redis", dsn="redis://cache:6379"
    )
    with pytest.raises(actions.BackupError, match="schedule"):
        actions.update_source(source, by=admin_user, schedule="every day")
    with pytest.raises(actions.BackupError) as refused:
        actions.update_source(source, by=operator, enabled=False)
    assert refused.value.code == "permission"
    actions.update_source(source, by=admin_user, dsn="redis://cache:6379")  # unchanged
    source.refresh_from_db()
    assert (source.schedule, source.enabled) == ("", True)
    assert [e.details["change"] for e in events(AuditEventType.BACKUP_SOURCE_CHANGED)] == [
        "created"
    ]


def test_a_password_in_a_dsn_is_refused_without_repeating_it(admin_user):
    source = actions.create_source(
        by=admin_user, name="cache", kind="redis", dsn="redis://cache:6379"
    )
    with pytest.raises(actions.BackupError) as refused:
        actions.update_source(source, by=admin_user, dsn="redis://:hunter2hunter2@cache:6379")
    assert "no password in the DSN" in refused.value.message
    assert "hunter2hunter2" not in refused.value.message
    source.refresh_from_db()
    assert source.dsn == "redis://cache:6379"
    assert len(events(AuditEventType.BACKUP_SOURCE_CHANGED)) == 1


def test_run_now_writes_one_request_event_per_source(client, operator, capture):
    first = actions.create_source(by="system:test", name="a-cache", kind="redis",
                                  dsn="redis://a:6379")  # fmt: skip
    second = actions.create_source(by="system:test", name="b-cache", kind="redis",
                                   dsn="redis://b:6379")  # fmt: skip
    client.force_login(operator)
    with capture():
        response = client.post(
            reverse("admin:backups_backupsource_changelist"),
            {"action": "run_now", "_selected_action": [first.pk, second.pk]},
        )
    assert response.status_code == 302
    requested = events(AuditEventType.BACKUP_RUN_REQUESTED)
    assert sorted(e.details["source"] for e in requested) == ["a-cache", "b-cache"]
    assert {e.actor for e in requested} == {operator.username}


def test_a_restore_target_the_action_refuses_is_shown_in_the_admin_not_a_traceback(
    client, admin_user, settings, tmp_path
):
    """The target's credential file must sit under BACKUP_SECRETS_DIR (checked by the
    model); a target registered before the directory moved fails that on its next edit."""
    settings.BACKUP_SECRETS_DIR = tmp_path / "old"
    (tmp_path / "old").mkdir()
    secret = tmp_path / "old" / "pw"
    secret.write_text("pw")
    target = restore_targets.create_restore_target(
        by=admin_user, name="scratch", kind="postgres", host="db", port=5432,
        username="restore", password_file=str(secret),
    )  # fmt: skip
    settings.BACKUP_SECRETS_DIR = tmp_path / "new"
    (tmp_path / "new").mkdir()
    client.force_login(admin_user)
    url = reverse("admin:backups_restoretarget_change", args=[target.pk])
    form = {
        "name": "scratch", "kind": "postgres", "enabled": "on", "description": "moved",
        "host": "db", "port": 5432, "username": "restore", "database": "",
        "password_env": "", "password_file": str(secret), "kubeconfig": "",
        "kube_context": "", "drills": "",
    }  # fmt: skip
    response = client.post(url, form, follow=True)
    page = response.content.decode()
    assert response.status_code == 200 and "Traceback" not in page
    assert "password_file" in page
    target.refresh_from_db()
    assert target.description == "" and target.revision == 1
    assert len(events(AuditEventType.RESTORE_TARGET_UPDATED)) == 0
    assert RestoreTarget.objects.count() == 1


def test_a_drill_requested_from_the_admin_writes_one_request_event(
    client, admin_user, operator, capture
):
    target = restore_targets.create_restore_target(
        by=admin_user, name="scratch-redis", kind="redis", host="127.0.0.1", port=6399,
        drills=True,
    )  # fmt: skip
    source = actions.create_source(
        by=admin_user, name="cache", kind="redis", dsn="redis://cache:6379", drill_target=target
    )
    client.force_login(operator)
    with capture():
        response = client.post(
            reverse("admin:backups_backupsource_changelist"),
            {"action": "drill_now", "_selected_action": [source.pk]},
        )
    assert response.status_code == 302
    [event] = events(AuditEventType.BACKUP_DRILL_REQUESTED)
    assert event.details == {"source": "cache", "target": "scratch-redis"}
    assert event.actor == operator.username
