"""Every auto-patch attempt ends: waiting ones can be rejected and expire, a staging step
whose worker died fails, a runnable attempt whose job vanished is queued again, and the
incident goes back to people each time. Time is controlled by passing ``now`` to the sweep;
the staging runner is an external HTTP service (a real stand-in on loopback)."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from incidents import actions, jobs
from incidents.choices import AttemptStatus, IncidentStatus, Outcome, Severity
from incidents.models import AgentCommand, AutoPatchAttempt, Incident, OpsPolicy
from portal.choices import AuditEventType
from portal.lib.redis import get_redis
from portal.models import AuditEvent
from tests.incidents.helpers import JSONService, beat, payload
from tests.jobs import run_jobs
from tests.stack import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def whitelisted(agent_and_secret):
    agent, secret = agent_and_secret
    OpsPolicy.current().whitelist.add(agent)
    return agent, secret


def _waiting_attempt(client, agent, secret) -> AutoPatchAttempt:
    """A CRITICAL webhook failure: policy puts the patch behind two signatures."""
    beat(client, agent.name, secret, payload(webhook_fail_rate=0.5))
    run_jobs()
    attempt = AutoPatchAttempt.objects.select_related("incident", "decision").get()
    assert (attempt.status, attempt.needs_approval) == (AttemptStatus.PENDING, True)
    assert attempt.incident.status == IncidentStatus.MITIGATING
    return attempt


def _attempt_audit(attempt):
    return AuditEvent.objects.filter(
        event_type=AuditEventType.AUTOPATCH_CHANGED, subject_id=str(attempt.pk)
    ).order_by("id")


def test_an_approver_rejects_a_waiting_patch_with_a_reason(client, whitelisted, approver):
    agent, secret = whitelisted
    attempt = _waiting_attempt(client, agent, secret)

    actions.reject_attempt(attempt, by=approver, reason="  not during the   sale ")

    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.REJECTED
    assert attempt.detail == "rejected by anna-approver: not during the sale"
    assert attempt.finished_at is not None
    assert attempt.decision.outcome == Outcome.SKIPPED
    assert attempt.decision.outcome_detail == attempt.detail
    last = _attempt_audit(attempt).last()
    assert (last.actor, last.actor_user_id) == ("anna-approver", approver.pk)
    assert last.details["status"] == "REJECTED"
    assert last.details["reason"] == "not during the sale"
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.OPEN  # back to people: escalation resumes
    assert incident.events.filter(kind="HANDED_BACK").exists()
    # Rejected is final: no signature, no run, no command.
    with pytest.raises(actions.IncidentError, match="not waiting for approval"):
        actions.approve_attempt(attempt, by=approver, confirmation=agent.name)
    run_jobs()
    assert not AgentCommand.objects.exists()


@pytest.mark.parametrize(
    ("who", "reason", "code"),
    [
        ("operator", "looks risky", "permission"),
        ("viewer", "looks risky", "permission"),
        ("approver", "no", "reason"),
        ("approver", "bad\x00reason", "invalid"),
    ],
)
def test_rejections_need_an_approver_and_a_reason(client, whitelisted, request, who, reason, code):
    agent, secret = whitelisted
    attempt = _waiting_attempt(client, agent, secret)
    audit_before = _attempt_audit(attempt).count()
    with pytest.raises(actions.IncidentError) as refused:
        actions.reject_attempt(attempt, by=request.getfixturevalue(who), reason=reason)
    assert refused.value.code == code
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.PENDING
    assert _attempt_audit(attempt).count() == audit_before


def test_only_waiting_attempts_can_be_rejected(client, whitelisted, approver):
    agent, secret = whitelisted
    beat(client, agent.name, secret, payload(webhook_fail_rate=0.1))  # MEDIUM: automatic
    run_jobs()
    attempt = AutoPatchAttempt.objects.get()
    assert attempt.status == AttemptStatus.APPLYING
    with pytest.raises(actions.IncidentError, match="is APPLYING, not waiting"):
        actions.reject_attempt(attempt, by=approver, reason="changed my mind")


def test_the_incident_page_rejects_and_shows_the_reason(client, whitelisted, approver, operator):
    agent, secret = whitelisted
    attempt = _waiting_attempt(client, agent, secret)
    url = f"/admin/incidents/incident/{attempt.incident_id}/"
    client.force_login(operator)
    page = client.get(url + "change/").content.decode()
    assert 'id="patch-expires"' in page and 'id="reject-patch-button"' not in page
    client.post(url + "act/reject-patch/", {"attempt": attempt.pk, "reason": "operators can't"})
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.PENDING

    client.force_login(approver)
    assert 'id="reject-patch-button"' in client.get(url + "change/").content.decode()
    for bad in ("x", "1\x00", ""):
        response = client.post(url + "act/reject-patch/", {"attempt": bad, "reason": "because"})
        assert response.status_code == 302
    response = client.post(
        url + "act/reject-patch/", {"attempt": attempt.pk, "reason": "not during the sale"},
        follow=True,
    )  # fmt: skip
    page = response.content.decode()
    assert "REJECTED" in page and "rejected by anna-approver: not during the sale" in page
    assert 'id="reject-patch-button"' not in page


def test_a_patch_nobody_approves_expires_after_the_ttl(client, whitelisted, settings):
    settings.AUTOPATCH_APPROVAL_TTL = 600
    agent, secret = whitelisted
    attempt = _waiting_attempt(client, agent, secret)
    assert attempt.approval_expires_at == attempt.created + timedelta(seconds=600)

    early = actions.sweep_attempts(now=attempt.approval_expires_at - timedelta(seconds=1))
    assert early["expired"] == []
    swept = actions.sweep_attempts(now=attempt.approval_expires_at)

    assert swept["expired"] == [attempt.pk]
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.EXPIRED
    assert attempt.detail == "not approved within 600s (0/2 signatures)"
    assert attempt.decision.outcome == Outcome.SKIPPED
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.OPEN
    # Back with people, the incident escalates again.
    assert incident.pk in actions.escalate_due(now=attempt.approval_expires_at + timedelta(hours=1))
    assert actions.sweep_attempts(now=attempt.approval_expires_at)["expired"] == []  # once


def test_an_acknowledged_incident_stays_acknowledged_when_its_patch_expires(
    client, whitelisted, operator
):
    agent, secret = whitelisted
    beat(client, agent.name, secret, payload(webhook_fail_rate=0.5))
    actions.acknowledge_incident(Incident.objects.get(), by=operator)  # before the decision
    run_jobs()
    attempt = AutoPatchAttempt.objects.get()
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.MITIGATING
    actions.sweep_attempts(now=attempt.approval_expires_at)
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.ACKNOWLEDGED


def test_the_sweep_job_runs_every_bound(client, whitelisted):
    result = jobs.sweep()
    assert {"rolled_back", "expired", "stuck_staging", "requeued"} <= result.keys()


def _approved_attempt(client, agent, secret, approver) -> AutoPatchAttempt:
    """MEDIUM severity, with the policy asking one signature for MEDIUM."""
    OpsPolicy.objects.update(multisig_min_severity=Severity.MEDIUM)
    beat(client, agent.name, secret, payload(webhook_fail_rate=0.1))
    run_jobs()
    attempt = AutoPatchAttempt.objects.get()
    assert actions.approve_attempt(attempt, by=approver).complete
    return attempt


def test_an_approved_patch_whose_job_vanished_is_queued_again(client, whitelisted, approver):
    agent, secret = whitelisted
    attempt = _approved_attempt(client, agent, secret, approver)
    get_redis().flushdb()  # the job is gone with it
    now = timezone.now()
    assert actions.sweep_attempts(now=now)["requeued"] == []  # too early to tell
    later = now + timedelta(seconds=actions.REQUEUE_AFTER + 1)
    assert actions.sweep_attempts(now=later)["requeued"] == [attempt.pk]
    assert actions.sweep_attempts(now=later)["requeued"] == []  # queued now: not twice
    run_jobs()
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.APPLYING


def test_an_approved_patch_never_started_expires(client, whitelisted, approver, settings):
    settings.AUTOPATCH_APPROVAL_TTL = 120
    agent, secret = whitelisted
    attempt = _approved_attempt(client, agent, secret, approver)
    assert actions.sweep_attempts(now=attempt.approval_expires_at)["expired"] == [attempt.pk]
    attempt.refresh_from_db()
    assert attempt.detail == "approved but not started within 120s (no worker ran it)"
    run_jobs()  # the job that was queued finds nothing to do
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.EXPIRED
    assert not AgentCommand.objects.exists()


def test_staging_whose_worker_died_fails_and_nothing_is_sent(
    client, whitelisted, approver, settings
):
    release = threading.Event()
    runner = JSONService({"ok": True, "detail": "green"}, hold=release)
    settings.STAGING_RUNNER_URL = runner.url
    agent, secret = whitelisted
    attempt = _approved_attempt(client, agent, secret, approver)
    outcome = {}

    def run():  # the job, as a worker runs it; it hangs inside the staging request
        try:
            outcome["result"] = jobs.run_attempt(attempt.pk)
        except actions.IncidentError as exc:
            outcome["error"] = exc.message
        finally:
            connection.close()

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_for(lambda: bool(runner.requests), 10, "the staging request")
        attempt.refresh_from_db()
        assert attempt.status == AttemptStatus.STAGING
        limit = settings.STAGING_TIMEOUT + actions.STAGING_GRACE
        assert actions.sweep_attempts(now=timezone.now())["stuck_staging"] == []
        later = attempt.status_changed_at + timedelta(seconds=limit + 1)
        assert actions.sweep_attempts(now=later)["stuck_staging"] == [attempt.pk]
    finally:
        release.set()
        worker.join(30)
        runner.stop()
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.FAILED
    assert (
        attempt.detail == f"staging did not finish within {limit}s (worker lost?); nothing was sent"
    )
    assert attempt.decision.outcome == Outcome.FAILURE
    # The late job found the attempt ended and sent nothing.
    assert outcome == {"result": "ended-during-staging"}
    assert not AgentCommand.objects.exists()
    assert Incident.objects.get().status == IncidentStatus.OPEN
