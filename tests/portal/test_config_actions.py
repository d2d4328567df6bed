"""The portal's own configuration (approval rules, notification channels, escalation
levels) goes through audited actions: admin add, edit and delete write one event each."""

import pytest
from django.urls import reverse

from portal import actions
from portal.choices import AuditEventType
from portal.errors import RequestRefused
from portal.models import ApprovalRule, EscalationLevel, NotificationChannel

pytestmark = pytest.mark.django_db

CONFIG = AuditEventType.NOTIFICATION_CONFIG_CHANGED


def events(kind: str):
    from portal.models import AuditEvent

    return list(AuditEvent.objects.filter(event_type=kind).order_by("id"))


def rule_form(rule: ApprovalRule, **fields):
    return {
        "required_approvals": rule.required_approvals,
        "require_confirmation": "on" if rule.require_confirmation else "",
        "allow_auto_approve": "on" if rule.allow_auto_approve else "",
        "validity_seconds": rule.validity_seconds,
    } | fields


@pytest.fixture
def medium_rule(db):
    rule, _ = ApprovalRule.objects.get_or_create(impact="MEDIUM")
    return rule


def test_an_approval_rule_edit_writes_one_event(client, admin_user, medium_rule):
    client.force_login(admin_user)
    url = reverse("admin:portal_approvalrule_change", args=[medium_rule.pk])
    response = client.post(url, rule_form(medium_rule, validity_seconds=600))
    assert response.status_code == 302, response.content.decode()[-1500:]
    [event] = events(AuditEventType.APPROVAL_RULE_CHANGED)
    assert event.details["changes"] == {
        "validity_seconds": {"old": medium_rule.validity_seconds, "new": 600}
    }
    assert event.details["impact"] == "MEDIUM"
    medium_rule.refresh_from_db()
    assert medium_rule.validity_seconds == 600


def test_high_impact_cannot_be_weakened_from_code_or_the_admin(client, admin_user):
    high, _ = ApprovalRule.objects.get_or_create(
        impact="HIGH", defaults={"required_approvals": 2, "require_confirmation": True}
    )
    with pytest.raises(RequestRefused, match="at least 2"):
        actions.update_approval_rule(high, by=admin_user, required_approvals=1)
    client.force_login(admin_user)
    url = reverse("admin:portal_approvalrule_change", args=[high.pk])
    response = client.post(url, rule_form(high, required_approvals=1))
    assert response.status_code == 200 and "at least 2" in response.content.decode()
    high.refresh_from_db()
    assert high.required_approvals == 2
    assert events(AuditEventType.APPROVAL_RULE_CHANGED) == []


def channel_fields(**fields):
    return {
        "name": "ops-hook", "kind": "WEBHOOK", "url": "", "url_env": "OPS_HOOK_URL",
        "recipients": "", "min_severity": "info", "enabled": True,
    } | fields  # fmt: skip


def channel_form(**fields):
    return channel_fields(enabled="on") | fields


def test_a_channel_added_edited_and_deleted_in_the_admin_writes_one_event_each(client, admin_user):
    client.force_login(admin_user)
    response = client.post(reverse("admin:portal_notificationchannel_add"), channel_form())
    assert response.status_code == 302, response.content.decode()[-1500:]
    channel = NotificationChannel.objects.get(name="ops-hook")
    url = reverse("admin:portal_notificationchannel_change", args=[channel.pk])
    response = client.post(url, channel_form(min_severity="warning"))
    assert response.status_code == 302, response.content.decode()[-1500:]
    delete_url = reverse("admin:portal_notificationchannel_delete", args=[channel.pk])
    response = client.post(delete_url, {"post": "yes"})
    assert response.status_code == 302
    assert not NotificationChannel.objects.exists()
    created, updated, deleted = events(CONFIG)
    assert [e.details["change"] for e in (created, updated, deleted)] == [
        "created", "updated", "deleted",
    ]  # fmt: skip
    assert updated.details["changed"] == ["min_severity"]
    assert {e.subject_id for e in (created, updated, deleted)} == {str(channel.pk)}


def test_delete_selected_channels_writes_one_event_per_channel(client, admin_user):
    first = actions.create_channel(by=admin_user, **channel_fields(name="a"))
    second = actions.create_channel(by=admin_user, **channel_fields(name="b"))
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:portal_notificationchannel_changelist"),
        {"action": "delete_selected", "_selected_action": [first.pk, second.pk], "post": "yes"},
    )
    assert response.status_code == 302
    deleted = [e for e in events(CONFIG) if e.details["change"] == "deleted"]
    assert sorted(e.details["name"] for e in deleted) == ["a", "b"]


def test_a_secret_url_never_reaches_the_audit_log(admin_user):
    channel = actions.create_channel(
        by=admin_user, **channel_fields(url="https://hooks.example.com/abc", url_env="")
    )
    actions.update_channel(channel, by=admin_user, url="https://hooks.example.com/other")
    assert all("hooks.example.com" not in str(e.details) for e in events(CONFIG))
    with pytest.raises(RequestRefused) as refused:
        actions.update_channel(channel, by="system:test", kind="SLACK")
    assert refused.value.code == "invalid" and "Slack" in refused.value.message


def test_an_escalation_level_channel_change_writes_one_event(client, admin_user):
    channel = actions.create_channel(by=admin_user, **channel_fields())
    level, _ = EscalationLevel.objects.get_or_create(level=2, defaults={"name": "L2"})
    client.force_login(admin_user)
    url = reverse("admin:portal_escalationlevel_change", args=[level.pk])
    response = client.post(
        url,
        {"level": 2, "name": level.name, "delay_minutes": level.delay_minutes,
         "channels": [channel.pk]},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[-1500:]
    [event] = [e for e in events(CONFIG) if e.subject_type == "portal.escalationlevel"]
    assert event.details["channels"] == ["ops-hook"]
    assert event.details["changes"] == {"channels": {"old": [], "new": [str(channel)]}}
    assert list(level.channels.all()) == [channel]


def test_only_administrators_change_portal_configuration(operator, medium_rule):
    with pytest.raises(RequestRefused) as refused:
        actions.update_approval_rule(medium_rule, by=operator, validity_seconds=900)
    assert refused.value.code == "permission"
    with pytest.raises(RequestRefused):
        actions.create_channel(by=operator, **channel_fields())
    assert not NotificationChannel.objects.exists()
