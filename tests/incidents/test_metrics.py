"""The self-healing KPIs on /metrics: no sample over no data (Prometheus convention), real
values once there are attempts and incidents, and what they are over beside them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from incidents import actions
from incidents.choices import AttemptStatus, DecisionAction, DecisionSource
from incidents.models import AutoPatchAttempt, Decision, Incident

pytestmark = pytest.mark.django_db

KPIS = ("success_rate_pct", "rollback_rate_pct", "mttd_seconds", "mttr_seconds")


def _scrape(client) -> dict[str, list[float]]:
    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    return {
        family.name: [sample.value for sample in family.samples]
        for family in text_string_to_metric_families(text)
        if family.name.startswith("portal_autoheal_")
    }


def test_kpis_over_nothing_have_no_sample_but_are_described(client):
    found = _scrape(client)
    for name in KPIS:
        assert found[f"portal_autoheal_{name}"] == [], name  # HELP/TYPE only, no 100 or 0
    assert found["portal_autoheal_attempts_finished"] == [0.0]
    assert found["portal_autoheal_incidents_opened"] == [0.0]
    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert "# HELP portal_autoheal_success_rate_pct" in text
    assert "portal_autoheal_success_rate_pct 100" not in text


def test_kpis_are_computed_over_finished_attempts_and_incidents(client):
    agent, _ = actions.create_agent(name="shop-1", kind="plugin", available_version="1.1.0")
    now = timezone.now()
    incident, _ = actions.open_or_update_incident(
        agent, cause="errors", rule_id=None, severity=2, title="errors", telemetry={},
        detected_at=now,
    )  # fmt: skip
    Incident.objects.filter(pk=incident.pk).update(
        detected_at=now - timedelta(seconds=30), opened_at=now,
        resolved_at=now + timedelta(minutes=5), status="RESOLVED",
    )  # fmt: skip
    decision = Decision.objects.create(
        incident=incident, source=DecisionSource.HEURISTIC, action=DecisionAction.PATCH
    )
    for status in (AttemptStatus.SUCCEEDED, AttemptStatus.SUCCEEDED, AttemptStatus.SUCCEEDED,
                   AttemptStatus.ROLLED_BACK, AttemptStatus.PENDING):  # fmt: skip
        AutoPatchAttempt.objects.create(
            incident=incident, agent=agent, target_version="1.1.0", status=status, severity=2,
            decision=decision,
            created=now, status_changed_at=now,
        )  # fmt: skip
    found = _scrape(client)
    assert found["portal_autoheal_success_rate_pct"] == [75.0]  # the pending one is not over
    assert found["portal_autoheal_rollback_rate_pct"] == [25.0]
    assert found["portal_autoheal_mttd_seconds"] == [30.0]
    assert found["portal_autoheal_mttr_seconds"] == [300.0]
    assert found["portal_autoheal_attempts_finished"] == [4.0]
    assert found["portal_autoheal_incidents_resolved"] == [1.0]
