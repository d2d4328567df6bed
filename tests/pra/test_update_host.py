"""``update_host``: approvals bind to the host's revision and die with an edit, for good.

Real PostgreSQL, Redis, RQ worker (burst, in-process) and the loopback sshd with its
generated wrappers; the end commands (systemctl, ...) are recording stand-ins because
this machine has no systemd.
"""

import django_rq
import pytest
from django.core.management import call_command

from portal.approvals import tally
from portal.choices import AuditEventType
from portal.lib.redis import get_redis
from portal.models import AuditEvent, Notification, NotificationChannel
from pra import actions
from pra.actions import ActionError
from pra.choices import ActionStatus
from pra.models import Host, PRAAction, PreflightStatus
from tests.jobs import run_jobs
from tests.pra.factories import propose
from tests.pra.helpers import register, restarts

pytestmark = pytest.mark.django_db(transaction=True)

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPjW5bLh0oZ0T7Rj4Z2s2cYyF0m9YVQ3b8cC0vQ2dXkq"


def _host_events(host):
    return list(
        AuditEvent.objects.filter(subject_type="pra.host", subject_id=str(host.pk))
        .exclude(event_type=AuditEventType.HOST_ADDED)
        .order_by("id")
    )


def _approved(operator, approver, host, name="restart_caddy"):
    action = propose(operator, host, name)
    run_jobs()  # the pre-flight passes on the real target
    actions.approve_action(action, by=approver, fingerprint=action.approval_fingerprint())
    action.refresh_from_db()
    assert action.status == ActionStatus.APPROVED
    return action


@pytest.mark.parametrize(
    ("field", "value", "word"),
    [("address", "localhost", "address"), ("port", 2222, "port"), ("ssh_user", "ops", "user")],
)
def test_an_edit_voids_the_approval_for_good_even_once_reverted(
    operator, approver, target_host, shared_ssh_target, field, value, word
):
    NotificationChannel.objects.create(name="ops", kind="WEBHOOK", url="http://127.0.0.1:9/h")
    action = _approved(operator, approver, target_host)
    shown = action.approval_fingerprint()
    original = getattr(target_host, field)

    actions.update_host(target_host, by=approver, **{field: value})
    action.refresh_from_db()
    assert action.status == ActionStatus.VOIDED
    assert action.void_reason == f"approval voided: host dns-1 changed ({word})"
    assert target_host.revision == 2

    actions.update_host(target_host, by=approver, **{field: original})  # reverted
    assert target_host.revision == 3
    get_redis().flushdb()  # even with the job gone, the sweep brings nothing back
    assert actions.reconcile_approved() == []
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.VOIDED
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 0
    assert action.approval_fingerprint() != shown  # same content again, another version
    with pytest.raises(ActionError, match=r"VOIDED.*approval voided: host dns-1 changed"):
        actions.request_execution(action, by=operator)
    events = _host_events(target_host)
    assert [e.event_type for e in events] == [AuditEventType.HOST_UPDATED] * 2  # one per edit
    assert events[0].details["voided"] == [action.pk]
    assert events[0].details["changes"] == {field: {"old": str(original), "new": str(value)}}
    voided = AuditEvent.objects.get(
        subject_type="pra.praaction", subject_id=str(action.pk), details__voided=True
    )
    assert voided.actor == approver.username
    assert Notification.objects.filter(title="Approval voided: restart_caddy on dns-1").count() == 1


def test_a_pre_edit_fingerprint_is_refused_after_the_edit_is_reverted(
    operator, approver, approver2, target_host
):
    action = propose(operator, target_host, "reboot_system")  # HIGH: two signatures
    run_jobs()
    shown = action.approval_fingerprint()
    actions.approve_action(action, by=approver, fingerprint=shown, confirmation="dns-1")
    old_key = target_host.host_key
    actions.update_host(target_host, by="system:test", host_key=OTHER_KEY)
    actions.update_host(target_host, by="system:test", host_key=old_key)  # back as it was
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED  # still waiting: it needs new approvals
    assert tally(action).count == 0  # the first signature was for an older revision
    with pytest.raises(ActionError, match="changed since you opened it"):
        actions.approve_action(action, by=approver2, fingerprint=shown, confirmation="dns-1")
    # The pre-flight ran again against the host as it is now.
    assert action.preflight_status == PreflightStatus.PENDING
    assert django_rq.get_queue("pra").job_ids == [actions.preflight_job_id(action.pk)]
    run_jobs()
    action.refresh_from_db()
    assert action.preflight_status == PreflightStatus.OK
    kinds = [e.event_type for e in _host_events(target_host)]
    assert kinds == [AuditEventType.HOST_KEY_PINNED] * 2


def test_edits_that_do_not_change_the_connection_keep_approvals(operator, approver, target_host):
    action = _approved(operator, approver, target_host)
    actions.update_host(target_host, by=approver, tags="dns,resolver")
    actions.update_host(target_host, by=approver, tags="dns,resolver")  # no change: no event
    action.refresh_from_db()
    assert action.status == ActionStatus.APPROVED
    assert target_host.revision == 1
    assert tally(action).complete
    assert [e.details["changes"] for e in _host_events(target_host)] == [
        {"tags": {"old": "", "new": "dns,resolver"}}
    ]


def test_a_running_action_is_not_voided(operator, approver, target_host):
    action = _approved(operator, approver, target_host)
    assert actions.claim_action(action.pk, job_id="test-job") is not None
    actions.update_host(target_host, by=approver, port=2200)
    action.refresh_from_db()
    assert action.status == ActionStatus.EXECUTING  # it already started: nothing to void


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 0}, "port"),
        ({"address": "dns\x00-1"}, "address: contains a character"),
        ({"host_key": "not a key"}, "host key"),
        ({"created": "2026-01-01"}, "no editable field created"),
        ({"name": "Bad Name"}, "name: lowercase"),
    ],
)
def test_bad_edits_are_refused_and_change_nothing(
    operator, approver, target_host, changes, message
):
    action = _approved(operator, approver, target_host)
    with pytest.raises(ActionError, match=message):
        actions.update_host(target_host, by=approver, **changes)
    action.refresh_from_db()
    assert action.status == ActionStatus.APPROVED
    assert Host.objects.get(pk=target_host.pk).revision == 1
    assert _host_events(target_host) == []


def test_the_host_admin_edit_goes_through_update_host(client, admin_user, operator, approver,
                                                     target_host):  # fmt: skip
    action = _approved(operator, approver, target_host)
    client.force_login(admin_user)
    page = client.get(f"/admin/pra/host/{target_host.pk}/change/")
    assert page.status_code == 200
    response = client.post(
        f"/admin/pra/host/{target_host.pk}/change/",
        {"name": "dns-1", "address": "127.0.0.2", "port": target_host.port, "ssh_user":
         target_host.ssh_user, "tags": "", "enabled": "on"},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[-2000:]
    action.refresh_from_db()
    assert action.status == ActionStatus.VOIDED
    assert action.void_reason == "approval voided: host dns-1 changed (address)"
    events = _host_events(target_host)
    assert [(e.event_type, e.actor) for e in events] == [
        (AuditEventType.HOST_UPDATED, admin_user.username)
    ]
    page = client.get(f"/admin/pra/praaction/{action.pk}/change/").content.decode()
    assert "approval voided: host dns-1 changed (address)" in page


def test_pra_host_repin_voids_approvals(ssh_target, settings, operator, approver):
    host = register(ssh_target, settings)
    action = _approved(operator, approver, host)
    ssh_target.rotate_host_key()
    from portal.lib import ssh

    new = ssh.fingerprint(ssh_target.host_key_line)
    call_command("pra_host", "repin", "dns-1", "--yes", "--fingerprint", new)
    action.refresh_from_db()
    assert action.status == ActionStatus.VOIDED
    assert action.void_reason == "approval voided: host dns-1 changed (host key)"
    assert [e.event_type for e in _host_events(host)] == [AuditEventType.HOST_KEY_PINNED]
    assert PRAAction.objects.get(pk=action.pk).host.host_key_fingerprint == new


def test_disabling_a_host_voids_its_approvals_and_renaming_it_too(
    operator, approver, target_host, shared_ssh_target
):
    first = _approved(operator, approver, target_host)
    actions.update_host(target_host, by=approver, enabled=False)
    actions.update_host(target_host, by=approver, enabled=True)  # re-enabled: still void
    first.refresh_from_db()
    assert (first.status, first.void_reason) == (
        ActionStatus.VOIDED,
        "approval voided: host dns-1 disabled",
    )
    second = _approved(operator, approver, target_host, "restart_unbound")
    actions.update_host(target_host, by=approver, name="dns-2")
    second.refresh_from_db()
    assert second.void_reason == "approval voided: host dns-2 changed (name)"
    run_jobs()
    # Only the pre-flights' read-only checks reached the target, no action.
    assert {tuple(call[:2]) for call in shared_ssh_target.calls()} <= {("systemctl", "cat")}
