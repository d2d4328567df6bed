"""A decision is always recorded with a classified outcome, whatever the decision service
answers and whatever goes wrong while carrying it out. The decision service is external:
real HTTP (and raw TCP) stand-ins on loopback. Jobs run on a real RQ worker (burst)."""

import pytest
from django.db import connection
from django_rq import get_queue
from rq.job import JobStatus

from incidents import actions
from incidents.choices import DecisionAction, DecisionSource, IncidentStatus, Outcome
from incidents.models import Decision, Incident
from pra.models import PRAAction
from tests.factories import offline_host
from tests.incidents.helpers import JSONService, RawService, beat, payload
from tests.jobs import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)

REMEDIATE = {"action": "REMEDIATE", "confidence": 0.9, "explanation": "restart the worker"}


@pytest.fixture
def decider(settings):
    services = []

    def start(reply=None, raw=None):
        service = RawService(raw) if raw is not None else JSONService(reply)
        services.append(service)
        settings.DECIDER_URL = service.url
        settings.DECIDER_TIMEOUT = 2
        return service

    yield start
    for service in services:
        service.stop()


def _decide_job_status(incident: Incident) -> str:
    job = get_queue("default").fetch_job(f"incident-decide-{incident.pk}")
    assert job is not None, "the decide job was enqueued"
    return job.get_status()


def test_a_host_remediation_for_an_agent_without_a_host_is_a_recorded_escalation(client, decider):
    service = decider(REMEDIATE)
    agent, secret = actions.create_agent(name="app-agent", kind="service")  # no host
    beat(client, agent.name, secret, payload(services={"worker": "failed"}))
    run_jobs()
    incident = Incident.objects.get()
    assert service.requests and service.requests[0]["cause"] == "service:worker"
    assert _decide_job_status(incident) == JobStatus.FINISHED  # the job did not crash
    decision = Decision.objects.get()
    assert (decision.source, decision.action) == (DecisionSource.DECIDER, DecisionAction.REMEDIATE)
    assert decision.outcome == Outcome.SKIPPED
    assert decision.outcome_detail == (
        "escalated: decider asked for a host remediation but the agent has no host"
    )
    assert incident.status == IncidentStatus.OPEN  # escalation goes on
    assert not PRAAction.objects.exists()
    messages = list(incident.events.values_list("kind", "message"))
    assert (
        "REMEDIATION",
        "no remediation proposed: decider asked for a host remediation but the agent has no "
        "host; a person decides",
    ) in messages


def test_a_decider_speaking_broken_http_falls_back_to_heuristics(client, decider):
    decider(raw=b"garbage\r\n\r\n")  # http.client.BadStatusLine, not an OSError
    agent, secret = actions.create_agent(name="app-agent", kind="service")
    beat(client, agent.name, secret, payload(services={"worker": "failed"}))
    run_jobs()
    incident = Incident.objects.get()
    assert _decide_job_status(incident) == JobStatus.FINISHED
    decision = Decision.objects.get()
    assert decision.source == DecisionSource.HEURISTIC
    assert decision.fallback_reason == "decider error: BadStatusLine"
    assert decision.action == DecisionAction.ESCALATE


@pytest.fixture
def failing_proposals():
    """A real database fault while the remediation is written: a PostgreSQL trigger that
    refuses every insert into the remediation table."""
    table = PRAAction._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER test_refuse_insert BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_insert()"
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER test_refuse_insert ON {table}")
        cursor.execute("DROP FUNCTION test_refuse_insert()")


def test_an_unexpected_error_while_acting_keeps_the_decision(client, failing_proposals):
    host = offline_host("dns-1")
    agent, secret = actions.create_agent(name="dns-1-agent", kind="host", host=host)
    beat(client, agent.name, secret, payload(services={"unbound": "inactive"}))
    run_jobs()
    incident = Incident.objects.get()
    assert _decide_job_status(incident) == JobStatus.FINISHED
    decision = Decision.objects.get()  # recorded, not rolled back with the failure
    assert decision.action == DecisionAction.REMEDIATE
    assert decision.outcome == Outcome.SKIPPED
    assert decision.outcome_detail.startswith(
        "escalated: carrying out REMEDIATE failed unexpectedly ("
    )
    assert "injected fault" not in decision.outcome_detail  # no database text on the page
    assert incident.status == IncidentStatus.OPEN and incident.remediation is None
    assert not PRAAction.objects.exists()
    kinds = list(incident.events.values_list("kind", flat=True))
    assert kinds.count("DECISION") == 2  # the decision, then what became of it
