"""End to end with real reference-agent processes against a running stack: daphne and an
RQ worker as subprocesses, real PostgreSQL and Redis. The staging runner is external: a real
HTTP stand-in on loopback. The decision service is not configured (heuristics decide)."""

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from incidents import actions
from incidents.choices import AttemptStatus, DecisionSource, IncidentStatus
from incidents.models import AgentCommand, AutoPatchAttempt, Decision, Incident, OpsPolicy
from tests.incidents.helpers import JSONService
from tests.stack import BASE_DIR, LiveStack, stack_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HEALTH_WINDOW = 4
QUIET = {"cpu_pct": 5, "mem_pct": 5, "disk_pct": 5}


@pytest.fixture
def staging():
    service = JSONService({"ok": True, "detail": "smoke tests green"})
    yield service
    service.stop()


@pytest.fixture
def stack(tmp_path, staging, settings):
    settings.AUTOPATCH_HEALTH_WINDOW = HEALTH_WINDOW
    env = stack_env(STAGING_RUNNER_URL=staging.url, AUTOPATCH_HEALTH_WINDOW=str(HEALTH_WINDOW))
    with LiveStack(env, tmp_path) as running:
        yield running


def _agent(stack, tmp_path, name, handler):
    agent, secret = actions.create_agent(name=name, kind="plugin", available_version="1.1.0")
    OpsPolicy.current().whitelist.add(agent)
    secret_file = tmp_path / f"{name}.key"
    secret_file.write_text(secret)
    telemetry = {"webhook_fail_rate": 0.1, "metrics": QUIET}
    handler_path = f"tests.incidents.agent_handlers:{handler}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "incidents.agent_client", "--url", stack.url, "--name", name,
         "--secret-file", str(secret_file), "--version", "1.0.0", "--period", "0.3",
         "--telemetry", json.dumps(telemetry), "--handler", handler_path],
        cwd=BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return agent, proc


def _status(attempt_filter) -> str | None:
    attempt = AutoPatchAttempt.objects.filter(**attempt_filter).first()
    return attempt.status if attempt else None


def test_webhook_failure_is_patched_and_verified_by_the_agent(stack, tmp_path, staging):
    agent, proc = _agent(stack, tmp_path, "shop-1", "fixing")
    try:
        wait_for(
            lambda: _status({"agent": agent}) == AttemptStatus.SUCCEEDED, 40, "the patch to succeed"
        )
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    incident = Incident.objects.get(agent=agent, cause="webhooks")
    assert incident.status == IncidentStatus.RESOLVED and incident.auto_resolved
    decision = Decision.objects.get(incident=incident)
    assert decision.source == DecisionSource.HEURISTIC and decision.outcome == "SUCCESS"
    assert staging.requests[0]["version"] == "1.1.0"
    update = AgentCommand.objects.get(agent=agent, kind="update")
    assert update.status == "ACKED"
    agent.refresh_from_db()
    assert agent.version == "1.1.0"
    kinds = list(incident.events.values_list("kind", flat=True))
    assert kinds[0] == "DETECTED" and "DECISION" in kinds and kinds[-1] == "RESOLVED"


def test_agent_never_on_the_new_version_is_rolled_back_within_the_window(stack, tmp_path):
    agent, proc = _agent(stack, tmp_path, "shop-2", "stuck")
    try:
        wait_for(
            lambda: _status({"agent": agent}) == AttemptStatus.HEALTH_CHECK, 40, "the update ack"
        )
        attempt = AutoPatchAttempt.objects.get(agent=agent)
        update = AgentCommand.objects.get(pk=attempt.update_command_id)
        # The worker applied the stack's configured window...
        window = (attempt.deadline - update.created).total_seconds()
        assert HEALTH_WINDOW <= window < HEALTH_WINDOW + 1
        # ...and the sweep (rqcron in production) rolls back exactly when it has passed: the
        # sweep is given the time instead of the test sleeping through the window.
        assert actions.expire_attempts(now=attempt.deadline) == []
        late = attempt.deadline + timedelta(milliseconds=1)
        assert actions.expire_attempts(now=late) == [attempt.pk]
        wait_for(
            lambda: AgentCommand.objects.filter(
                agent=agent, kind="rollback", status="ACKED"
            ).exists(),
            20,
            "the agent to apply the rollback",
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.ROLLED_BACK
    assert (attempt.finished_at - attempt.status_changed_at).total_seconds() < 1
    assert attempt.decision.outcome == "FAILURE"
    agent.refresh_from_db()
    assert agent.version == "1.0.0"
    # Still failing on the old version: back with people, not resolved.
    assert Incident.objects.get(agent=agent, cause="webhooks").status == IncidentStatus.OPEN
