"""The missed-heartbeat sweep in bulk: a fixed number of statements per batch whatever its
size, one audit event and one decision job per batch, the same incidents, timeline,
notifications and decisions as one by one. PostgreSQL, a real Redis and a real RQ worker."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_rq import get_queue

from incidents import actions
from incidents.choices import DecisionAction, IncidentStatus, Severity
from incidents.models import Agent, Decision, Incident, IncidentEvent
from portal.choices import AuditEventType, NotificationKind
from portal.models import AuditEvent, Notification, NotificationChannel
from tests.incidents.helpers import JSONService, beat, overdue_agents
from tests.jobs import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def channels(db):
    return [
        NotificationChannel.objects.create(
            name=f"hook-{n}", kind="WEBHOOK", url=f"http://127.0.0.1:9/{n}"
        )
        for n in ("a", "b")
    ]


def queued(prefix: str) -> list:
    queue = get_queue("default")
    return [job for job in queue.get_jobs() if job.id.startswith(prefix)]


def test_it_opens_one_incident_per_overdue_agent_with_its_timeline_and_notifications(
    channels, no_storms
):
    now = timezone.now()
    agents = overdue_agents(250, now=now)
    flagged = actions.mark_missing_agents(now=now, batch=100)
    assert sorted(flagged) == sorted(a.pk for a in agents)
    assert Agent.objects.filter(missing=True).count() == 250
    incidents = Incident.objects.filter(cause="heartbeat")
    assert incidents.count() == 250
    one = incidents.select_related("agent").get(agent__name="fleet-00007")
    source = Agent.objects.get(name="fleet-00007")
    assert one.status == IncidentStatus.OPEN and one.severity == Severity.HIGH
    assert one.detected_at == source.alert_after  # MTTD from when it was due, as before
    assert one.title == f"no heartbeat since {source.last_seen}"
    assert one.telemetry == {"cpu_pct": 17}
    assert one.escalation_level == 1 and one.next_escalation_at is not None
    assert list(one.events.values_list("kind", flat=True)) == ["DETECTED"]
    assert IncidentEvent.objects.filter(kind="DETECTED").count() == 250
    # Every incident reaches every channel, as notify() would route it.
    rows = Notification.objects.filter(kind=NotificationKind.INCIDENT_OPENED)
    assert rows.count() == 500
    assert set(rows.filter(subject_id=str(one.pk)).values_list("channel__name", flat=True)) == {
        "hook-a",
        "hook-b",
    }
    assert rows.filter(subject_id=str(one.pk)).first().title == (f"[High] fleet-00007: {one.title}")
    # ... and one job per batch makes their first attempts (enqueued on commit).
    batches = queued("notify-batch-")
    assert len(batches) == 3
    assert sorted(pk for job in batches for pk in job.args[0]) == sorted(
        rows.values_list("pk", flat=True)
    )
    assert len(queued("notify-")) == 3
    # One audit event per batch, naming its agents and incidents.
    audits = AuditEvent.objects.filter(event_type=AuditEventType.INCIDENT_OPENED).order_by("id")
    assert [a.details["count"] for a in audits] == [100, 100, 50]
    named = [pk for a in audits for pk in a.details["agents"]]
    assert sorted(named) == sorted(a.pk for a in agents)
    assert sorted(pk for a in audits for pk in a.details["incidents"]) == sorted(
        incidents.values_list("pk", flat=True)
    )
    # One decision job per batch, each with its incidents' ids.
    jobs = queued("incident-decide-batch-")
    assert len(jobs) == 3
    assert sorted(pk for job in jobs for pk in job.args[0]) == sorted(
        incidents.values_list("pk", flat=True)
    )


def test_the_batch_jobs_send_every_page_and_decide_every_incident_once():
    receiver = JSONService({"ok": True})
    NotificationChannel.objects.create(name="pager", kind="WEBHOOK", url=receiver.url)
    broken = JSONService({"no": True}, status=500)
    NotificationChannel.objects.create(name="broken", kind="WEBHOOK", url=broken.url)
    now = timezone.now()
    overdue_agents(30, now=now)
    try:
        actions.mark_missing_agents(now=now, batch=20)
        run_jobs()
    finally:
        receiver.stop()
        broken.stop()
    pages = Notification.objects.filter(channel__name="pager")
    assert pages.count() == 30 and set(pages.values_list("status", flat=True)) == {"SENT"}
    assert sorted(r["subject"]["id"] for r in receiver.requests) == sorted(
        str(pk) for pk in Incident.objects.values_list("pk", flat=True)
    )
    # A failed first attempt hands the row to its own job, which retries on schedule.
    failing = Notification.objects.filter(channel__name="broken")
    assert failing.count() == 30
    assert set(failing.values_list("status", "attempts")) == {("PENDING", 2)}
    scheduled = set(get_queue("default").scheduled_job_registry.get_job_ids())
    assert scheduled == {f"notify-{pk}" for pk in failing.values_list("pk", flat=True)}
    assert Decision.objects.count() == 30
    assert set(Decision.objects.values_list("action", flat=True)) == {DecisionAction.ESCALATE}
    # A batch run again (a retry, a duplicate) decides nothing twice.
    ids = list(Incident.objects.values_list("pk", flat=True))
    assert actions.decide_many(ids) == {"decided": 0, "skipped": 30, "deferred": 0}
    assert Decision.objects.count() == 30


def test_a_batch_past_its_budget_leaves_the_rest_to_a_follow_up_job(channels):
    now = timezone.now()
    overdue_agents(5, now=now)
    actions.mark_missing_agents(now=now)
    get_queue("default").empty()
    ids = list(Incident.objects.order_by("pk").values_list("pk", flat=True))
    assert actions.decide_many(ids, budget=-1) == {"decided": 0, "skipped": 0, "deferred": 5}
    [follow_up] = queued("incident-decide-batch-")
    assert follow_up.args[0] == ids
    run_jobs()
    assert Decision.objects.count() == 5


def test_the_single_incident_entry_point_still_decides_one():
    from incidents import jobs

    agent, _ = actions.create_agent(name="lonely")
    incident, _ = actions.open_or_update_incident(
        agent, cause="cpu", rule_id=None, severity=2, title="cpu high", telemetry={},
        detected_at=timezone.now(),
    )  # fmt: skip
    assert jobs.decide(incident.pk) == DecisionAction.ESCALATE


def test_statements_per_batch_do_not_grow_with_the_batch(channels, no_storms):
    now = timezone.now()

    def statements(count: int, prefix: str) -> int:
        overdue_agents(count, now=now, prefix=prefix)
        with CaptureQueriesContext(connection) as captured:
            assert len(actions.mark_missing_agents(now=now, batch=1000)) == count
        return len(captured.captured_queries)

    statements(1, "warm")  # rules read once, then cached
    small = statements(10, "small")
    large = statements(400, "large")
    assert small == large, (small, large)
    assert large <= 25


def test_a_repeat_updates_the_open_incident_and_pages_nobody(channels):
    now = timezone.now()
    [agent] = overdue_agents(1, now=now)
    actions.mark_missing_agents(now=now)
    incident = Incident.objects.get()
    pages = Notification.objects.count()
    # The agent looks alive again but its incident stayed open (e.g. acknowledged race).
    Agent.objects.filter(pk=agent.pk).update(missing=False)
    assert actions.mark_missing_agents(now=now) == [agent.pk]
    incident.refresh_from_db()
    assert Incident.objects.count() == 1 and incident.occurrences == 2
    assert Notification.objects.count() == pages


def test_an_agent_whose_heartbeat_is_being_written_is_left_to_it(channels):
    """A heartbeat holding the agent's row (its UPDATE not committed yet) is not waited
    for and not flagged: the heartbeat moves ``alert_after`` on."""
    now = timezone.now()
    busy, idle = overdue_agents(2, now=now)
    locked, release = threading.Event(), threading.Event()

    def heartbeat_in_flight():
        try:
            with transaction.atomic():
                Agent.objects.select_for_update().filter(pk=busy.pk).update(
                    alert_after=now + timedelta(minutes=5)
                )
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=heartbeat_in_flight)
    thread.start()
    assert locked.wait(10)
    try:
        assert actions.mark_missing_agents(now=now) == [idle.pk]
    finally:
        release.set()
        thread.join(10)
    assert actions.mark_missing_agents(now=now) == []
    assert not Agent.objects.get(pk=busy.pk).missing


def test_a_flagged_agent_that_beats_again_resolves_its_incident(client, agent_and_secret):
    agent, secret = agent_and_secret
    beat(client, agent.name, secret)
    agent.refresh_from_db()
    later = agent.alert_after + timedelta(seconds=1)
    assert actions.mark_missing_agents(now=later) == [agent.pk]
    beat(client, agent.name, secret)
    incident = Incident.objects.get(cause="heartbeat")
    assert incident.status == IncidentStatus.RESOLVED and incident.auto_resolved


def test_a_heartbeat_racing_the_sweep_still_resolves_the_incident(agent_and_secret):
    """The signature check read the agent (not missing); the sweep flagged it and opened
    its incident before the heartbeat's UPDATE: the heartbeat still clears it."""
    agent, _ = agent_and_secret
    Agent.objects.filter(pk=agent.pk).update(
        alert_after=timezone.now() - timedelta(seconds=5), last_seen=timezone.now()
    )
    stale = Agent.objects.get(pk=agent.pk)  # what the signature check read
    assert actions.mark_missing_agents(now=timezone.now()) == [agent.pk]
    assert not stale.missing
    actions.ingest_heartbeat(
        stale, version="1.0.0", environment="production",
        telemetry={"errors_last_24h": 0, "webhook_fail_rate": 0.0},
        signed_us=time.time_ns() // 1000, nonce="n" * 20,
    )  # fmt: skip
    incident = Incident.objects.get(cause="heartbeat")
    assert incident.status == IncidentStatus.RESOLVED
    assert not Agent.objects.get(pk=agent.pk).missing
