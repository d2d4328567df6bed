"""Approval rules (no SSH needed: the pre-flight job is only enqueued, never run here)."""

import pytest
from django.core.exceptions import ValidationError

from portal.approvals import rule_for, tally
from portal.models import ApprovalRule, AuditEvent
from pra import actions
from pra.actions import ActionError
from pra.choices import ActionStatus
from pra.models import PRAAction
from tests.pra.factories import offline_host, propose

pytestmark = pytest.mark.django_db


@pytest.fixture
def host():
    return offline_host()


def _events(action, kind):
    return AuditEvent.objects.filter(
        subject_type="pra.praaction", subject_id=str(action.pk), event_type=kind
    )


def test_medium_needs_one_human_approval(operator, approver, host):
    action = propose(operator, host, "restart_caddy")
    assert action.status == ActionStatus.PROPOSED
    result = actions.approve_action(action, by=approver, fingerprint=action.approval_fingerprint())
    action.refresh_from_db()
    assert result.complete and action.status == ActionStatus.APPROVED
    assert action.expires_at is not None
    assert (action.expires_at - action.approved_at).total_seconds() == 300
    assert _events(action, "PRA_APPROVED").count() == 1


def test_it_refuses_self_approval(operator, host):
    # An operator who is also an approver still cannot approve their own proposal.
    from django.contrib.auth.models import Group

    operator.groups.add(Group.objects.get(name="approver"))
    action = propose(operator, host, "restart_caddy")
    with pytest.raises(ActionError, match="someone else") as exc:
        actions.approve_action(action, by=operator)
    assert exc.value.code == "self_approval"
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED


def test_only_approvers_can_approve(operator, operator2, viewer, host):
    action = propose(operator, host, "restart_caddy")
    for person in (operator2, viewer):
        with pytest.raises(ActionError) as exc:
            actions.approve_action(action, by=person)
        assert exc.value.code == "permission"
    assert tally(action).count == 0


def test_high_needs_two_distinct_approvers_and_confirmation(operator, approver, approver2, host):
    action = propose(operator, host, "reboot_system")
    with pytest.raises(ActionError, match="Type the target's name"):
        actions.approve_action(action, by=approver)
    with pytest.raises(ActionError, match="Type the target's name"):
        actions.approve_action(action, by=approver, confirmation="DNS-1")
    first = actions.approve_action(action, by=approver, confirmation="dns-1")
    assert (first.count, first.required, first.complete) == (1, 2, False)
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED
    # The same person again does not count twice.
    with pytest.raises(ActionError) as exc:
        actions.approve_action(action, by=approver, confirmation="dns-1")
    assert exc.value.code == "already_signed"
    second = actions.approve_action(action, by=approver2, confirmation="dns-1")
    assert second.complete and second.approvers == [approver.username, approver2.username]
    action.refresh_from_db()
    assert action.status == ActionStatus.APPROVED


def test_high_is_never_auto_approved(operator, host):
    with pytest.raises(ActionError, match="never auto-approved"):
        propose(operator, host, "reboot_system", auto_approve=True)
    assert not PRAAction.objects.exists()


def test_only_low_impact_is_ever_auto_approved(operator, host):
    from portal.approvals import may_auto_approve

    rule = ApprovalRule.objects.get(impact="MEDIUM")
    rule.allow_auto_approve = True
    with pytest.raises(ValidationError):
        rule.full_clean()
    rule.save()
    assert not may_auto_approve("MEDIUM")
    assert may_auto_approve("LOW")


def test_admin_cannot_weaken_high_rules(admin_user):
    rule = ApprovalRule.objects.get(impact="HIGH")
    rule.required_approvals = 1
    rule.allow_auto_approve = True
    with pytest.raises(ValidationError):
        rule.full_clean()
    rule.save()  # even if written behind the form's back…
    effective = rule_for("HIGH")
    assert (effective.required_approvals, effective.allow_auto_approve) == (2, False)


def test_a_stale_approval_is_refused(operator, approver, host):
    action = propose(operator, host, "restart_caddy")
    shown = action.approval_fingerprint()
    # The host's key is re-pinned after the approver opened the page.
    actions.pin_host_key(
        host,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPjW5bLh0oZ0T7Rj4Z2s2cYyF0m9YVQ3b8cC0vQ2dXkq",
        by="system:test",
    )
    action.refresh_from_db()
    with pytest.raises(ActionError, match="changed since you opened it"):
        actions.approve_action(action, by=approver, fingerprint=shown)
    assert action.status == ActionStatus.PROPOSED


def test_signatures_for_an_old_version_do_not_count(operator, approver, approver2, host):
    action = propose(operator, host, "reboot_system")
    actions.approve_action(action, by=approver, confirmation="dns-1")
    actions.pin_host_key(
        host,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPjW5bLh0oZ0T7Rj4Z2s2cYyF0m9YVQ3b8cC0vQ2dXkq",
        by="system:test",
    )
    action.refresh_from_db()
    result = actions.approve_action(action, by=approver2, confirmation="dns-1")
    assert result.count == 1 and not result.complete


def test_rejection_needs_a_reason_and_ends_the_action(operator, approver, host):
    action = propose(operator, host, "restart_caddy")
    with pytest.raises(ActionError, match="needs a reason"):
        actions.reject_action(action, by=approver, reason="  no ")
    actions.reject_action(action, by=approver, reason="not during business hours")
    action.refresh_from_db()
    assert action.status == ActionStatus.REJECTED
    assert _events(action, "PRA_REJECTED").get().details["reason"] == "not during business hours"
    with pytest.raises(ActionError) as exc:
        actions.approve_action(action, by=approver)
    assert exc.value.code == "state"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "rm_everything"}, "unknown action"),
        ({"action": "restart_container", "params": {"name": "x; rm -rf /"}}, "characters"),
        ({"params": {"unit": "sshd"}}, "takes no parameter"),
        ({"rationale": "fix it"}, "Explain why"),
        ({"rationale": "aaaa aaaa aaaa aaaa aaaa aaaa"}, "Explain why"),
    ],
)
def test_bad_proposals_are_refused_and_change_nothing(operator, host, kwargs, message):
    events = AuditEvent.objects.count()
    with pytest.raises(ActionError, match=message):
        propose(operator, host, **kwargs)
    assert not PRAAction.objects.exists()
    assert AuditEvent.objects.count() == events


def test_viewers_and_approvers_cannot_propose(viewer, approver, host):
    for person in (viewer, approver):
        with pytest.raises(ActionError) as exc:
            propose(person, host)
        assert exc.value.code == "permission"


def test_text_the_database_cannot_store_is_refused_by_name(operator, approver, host):
    action = propose(operator, host, "restart_caddy")
    with pytest.raises(ActionError, match=r"^comment: contains a character"):
        actions.approve_action(action, by=approver, comment="ok\x00")
    with pytest.raises(ActionError, match=r"^reason: contains a character"):
        actions.reject_action(action, by=approver, reason="not now \ud800")
    with pytest.raises(ActionError, match=r"^rationale: contains a character"):
        propose(operator, host, "restart_unbound", rationale="unbound is down \x00 " * 3)
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED and tally(action).count == 0
    assert PRAAction.objects.count() == 1
