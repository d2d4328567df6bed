"""Decision → policy → staging → apply → health check → success or rollback.
The decision service and the staging runner are external HTTP services: tests run small
real HTTP stand-ins on loopback (``JSONService``). Jobs run on a real RQ worker (burst)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from incidents import actions
from incidents.choices import AttemptStatus, DecisionSource, IncidentStatus, Outcome, Severity
from incidents.models import AgentCommand, AutoPatchAttempt, Decision, Incident, OpsPolicy
from tests.incidents.helpers import JSONService, beat, payload
from tests.jobs import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staging(settings):
    service = JSONService({"ok": True, "detail": "smoke tests green"})
    settings.STAGING_RUNNER_URL = service.url
    yield service
    service.stop()


@pytest.fixture
def whitelisted(agent_and_secret):
    agent, secret = agent_and_secret
    OpsPolicy.current().whitelist.add(agent)
    return agent, secret


def _failing(client, agent, secret, rate=0.1):
    """A webhook failure rate at warning level → MEDIUM severity (within default policy)."""
    beat(client, agent.name, secret, payload(webhook_fail_rate=rate))
    run_jobs()  # decide → staging → update command
    return Incident.objects.get(agent=agent, cause="webhooks")


def test_patch_succeeds_when_the_agent_reports_the_new_version_healthy(
    client, whitelisted, staging
):
    agent, secret = whitelisted
    incident = _failing(client, agent, secret)
    decision = Decision.objects.get(incident=incident)
    assert decision.source == DecisionSource.HEURISTIC
    assert decision.fallback_reason == "no decision service configured"
    attempt = AutoPatchAttempt.objects.get()
    assert attempt.status == AttemptStatus.APPLYING
    assert attempt.staging_result.startswith("smoke test passed")
    assert staging.requests == [
        {"agent": agent.name, "from_version": "1.0.0", "version": "1.1.0", "attempt": attempt.pk}
    ]
    commands = beat(client, agent.name, secret, payload(webhook_fail_rate=0.1)).json()["commands"]
    assert commands == [
        {"id": attempt.update_command_id, "kind": "update",
         "payload": {"version": "1.1.0", "attempt": attempt.pk}}
    ]  # fmt: skip
    beat(client, agent.name, secret, payload(version="1.1.0"))
    attempt.refresh_from_db()
    incident.refresh_from_db()
    decision.refresh_from_db()
    assert attempt.status == AttemptStatus.SUCCEEDED
    assert incident.status == IncidentStatus.RESOLVED and incident.auto_resolved
    assert decision.outcome == Outcome.SUCCESS


def test_no_healthy_heartbeat_in_the_window_rolls_back(client, whitelisted, staging, settings):
    agent, secret = whitelisted
    _failing(client, agent, secret)
    attempt = AutoPatchAttempt.objects.get()
    # The agent takes the update but keeps failing on the new version.
    beat(client, agent.name, secret, payload(version="1.1.0", webhook_fail_rate=0.1))
    assert actions.expire_attempts(now=timezone.now()) == []
    later = timezone.now() + timedelta(seconds=settings.AUTOPATCH_HEALTH_WINDOW + 1)
    assert actions.expire_attempts(now=later) == [attempt.pk]
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.ROLLED_BACK
    rollback = AgentCommand.objects.get(pk=attempt.rollback_command_id)
    assert (rollback.kind, rollback.payload["version"]) == ("rollback", "1.0.0")
    assert attempt.decision.outcome == Outcome.FAILURE
    # Terminal attempts never move again: not by a second sweep, a second rollback, a late
    # healthy heartbeat on the new version, nor a late ack of the update.
    assert actions.expire_attempts(now=later) == []
    assert not actions.roll_back(attempt, "again")
    beat(client, agent.name, secret, payload(version="1.1.0"))
    actions.finish_command(attempt.update_command_id, agent, ok=True, output="done late")
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.ROLLED_BACK
    assert AgentCommand.objects.filter(kind="rollback").count() == 1


def test_staging_failure_stops_before_anything_is_sent(client, whitelisted, settings):
    agent, secret = whitelisted
    service = JSONService({"ok": False, "detail": "checkout test failed"})
    settings.STAGING_RUNNER_URL = service.url
    try:
        _failing(client, agent, secret)
    finally:
        service.stop()
    attempt = AutoPatchAttempt.objects.get()
    assert attempt.status == AttemptStatus.FAILED
    assert "checkout test failed" in attempt.detail
    assert not AgentCommand.objects.exists()


def test_without_staging_runner_the_step_is_recorded_as_skipped(client, whitelisted):
    agent, secret = whitelisted
    _failing(client, agent, secret)
    attempt = AutoPatchAttempt.objects.get()
    assert attempt.staging_result.startswith("skipped")
    assert attempt.status == AttemptStatus.APPLYING


def test_the_decision_service_is_used_when_it_answers(client, whitelisted, settings):
    agent, secret = whitelisted
    service = JSONService(
        {
            "action": "PATCH",
            "patch_version": "1.2.0",
            "confidence": 0.93,
            "explanation": "known bug",
        }
    )
    settings.DECIDER_URL = service.url
    try:
        _failing(client, agent, secret)
    finally:
        service.stop()
    decision = Decision.objects.get()
    assert (decision.source, decision.patch_version, decision.confidence) == (
        DecisionSource.DECIDER, "1.2.0", 0.93,
    )  # fmt: skip
    assert service.requests[0]["cause"] == "webhooks"
    assert AutoPatchAttempt.objects.get().target_version == "1.2.0"


@pytest.mark.parametrize(
    ("reply", "status", "delay", "reason"),
    [
        ({"action": "PATCH"}, 200, 0, "answer rejected"),
        ({"action": "DELETE_EVERYTHING", "confidence": 1}, 200, 0, "answer rejected"),
        ({}, 503, 0, "unreachable"),
        ({"action": "PATCH", "patch_version": "9", "confidence": 1}, 200, 1.5, "unreachable"),
    ],
)
def test_heuristics_decide_when_the_service_is_broken(
    client, whitelisted, settings, reply, status, delay, reason
):
    agent, secret = whitelisted
    service = JSONService(reply, status=status, delay=delay)
    settings.DECIDER_URL = service.url
    settings.DECIDER_TIMEOUT = 0.5
    try:
        _failing(client, agent, secret)
    finally:
        service.stop()
    decision = Decision.objects.get()
    assert decision.source == DecisionSource.HEURISTIC
    assert reason in decision.fallback_reason
    assert decision.patch_version == "1.1.0"


def test_decider_down_falls_back_to_heuristics(client, whitelisted, settings):
    agent, secret = whitelisted
    settings.DECIDER_URL = "http://127.0.0.1:1/"
    _failing(client, agent, secret)
    decision = Decision.objects.get()
    assert decision.source == DecisionSource.HEURISTIC
    assert "unreachable" in decision.fallback_reason


def test_agents_off_the_whitelist_are_never_patched(client, agent_and_secret):
    agent, secret = agent_and_secret
    _failing(client, agent, secret)
    assert not AutoPatchAttempt.objects.exists()
    decision = Decision.objects.get()
    assert decision.outcome == Outcome.SKIPPED and "whitelist" in decision.outcome_detail


def test_above_max_severity_nothing_is_automatic(client, whitelisted):
    agent, secret = whitelisted
    OpsPolicy.objects.update(
        max_auto_severity=Severity.LOW, multisig_min_severity=Severity.CRITICAL
    )
    _failing(client, agent, secret)  # MEDIUM
    assert not AutoPatchAttempt.objects.exists()
    assert "above the automatic maximum" in Decision.objects.get().outcome_detail


def test_high_severity_patch_waits_for_approvals(client, whitelisted, approver, staging):
    agent, secret = whitelisted
    _failing(client, agent, secret, rate=0.5)  # critical in production → CRITICAL
    attempt = AutoPatchAttempt.objects.get()
    assert attempt.needs_approval and attempt.status == AttemptStatus.PENDING
    run_jobs()
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.PENDING  # nothing without signatures
    with pytest.raises(actions.IncidentError, match="Type the target"):
        actions.approve_attempt(attempt, by=approver)
    tally = actions.approve_attempt(attempt, by=approver, confirmation=agent.name)
    assert not tally.complete  # CRITICAL uses the HIGH rule: two people


def test_kill_switch_cancels_attempts_not_yet_applying(client, whitelisted, admin_user):
    agent, secret = whitelisted
    OpsPolicy.objects.update(multisig_min_severity=Severity.MEDIUM)
    _failing(client, agent, secret)
    attempt = AutoPatchAttempt.objects.get()
    assert attempt.status == AttemptStatus.PENDING
    assert actions.set_kill_switch(False, by=admin_user) == [attempt.pk]
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.CANCELLED
    assert attempt.decision.outcome == Outcome.SKIPPED


def test_kill_switch_off_means_no_new_attempts(client, whitelisted, admin_user):
    agent, secret = whitelisted
    actions.set_kill_switch(False, by=admin_user)
    _failing(client, agent, secret)
    assert not AutoPatchAttempt.objects.exists()
    assert "kill switch" in Decision.objects.get().outcome_detail


def test_update_failed_on_the_agent_rolls_back(client, whitelisted):
    agent, secret = whitelisted
    _failing(client, agent, secret)
    attempt = AutoPatchAttempt.objects.get()
    actions.finish_command(attempt.update_command_id, agent, ok=False, output="disk full")
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.ROLLED_BACK
    assert "disk full" in attempt.detail
