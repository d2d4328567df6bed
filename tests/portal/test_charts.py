"""The charts page: server-rendered SVG from real rows (PostgreSQL), a bounded query cost,
nothing fetched from anywhere, "no data yet" over nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from incidents import actions as incidents
from incidents.choices import AttemptStatus
from incidents.models import AutoPatchAttempt, Incident
from pra.models import PRAAction
from tests.portal import dashboard_world as world

pytestmark = pytest.mark.django_db

CHARTS = ("incidents-per-day", "mttd-per-day", "mttr-per-day", "autopatch-rates",
          "time-to-approval", "backup-size", "backup-duration")  # fmt: skip


def history(operator, approver, *, days: int, tag: str) -> None:
    """Incidents, patches, approvals and backups spread over the last ``days`` days."""
    now = timezone.now()
    for day in range(days):
        agent, _ = incidents.create_agent(name=f"{tag}-agent-{day}", kind="service")
        incident, _ = incidents.open_or_update_incident(
            agent, cause="errors", rule_id=None, severity=day % 4 + 1, title="errors",
            telemetry={}, detected_at=now,
        )  # fmt: skip
        opened = now - timedelta(days=day, hours=1)
        Incident.objects.filter(pk=incident.pk).update(
            detected_at=opened - timedelta(seconds=40 + day * 10), opened_at=opened,
            resolved_at=opened + timedelta(minutes=3 + day), status="RESOLVED",
        )  # fmt: skip
        attempt = world.patch_attempt(agent)
        AutoPatchAttempt.objects.filter(pk=attempt.pk).update(
            status=AttemptStatus.ROLLED_BACK if day % 3 == 0 else AttemptStatus.SUCCEEDED,
            finished_at=opened + timedelta(minutes=2),
        )
    for action in world.proposals(operator, world.offline_host(f"{tag}-host"), days):
        PRAAction.objects.filter(pk=action.pk).update(
            status="APPROVED", approved_at=action.created + timedelta(seconds=95)
        )
    world.backup_source(f"{tag}-cache", runs=days * 2)


def _section(html: str, key: str) -> str:
    return re.search(rf'<section id="chart-{key}".*?</section>', html, re.S)[0]


def test_every_chart_draws_the_rows_it_is_about(
    client, viewer, operator, approver, django_assert_max_num_queries
):
    history(operator, approver, days=3, tag="a")
    client.force_login(viewer)
    with django_assert_max_num_queries(25):
        small = client.get("/charts/?days=14")
    history(operator, approver, days=12, tag="b")
    with django_assert_max_num_queries(25):
        page = client.get("/charts/?days=14")
    assert small.status_code == page.status_code == 200
    html = page.content.decode()
    for key in CHARTS:
        section = _section(html, key)
        marks = section.count("<rect ") + section.count("<circle ")
        assert "<svg" in section and marks >= 3, key
        assert "no data yet" not in section, key
    assert _section(html, "incidents-per-day").count("<rect ") >= 12
    assert "target 2 min 0 s" in _section(html, "mttd-per-day")
    assert "target 10 min 0 s" in _section(html, "mttr-per-day")
    rates = _section(html, "autopatch-rates")
    assert "success target 95 %" in rates and "rollback target 2 %" in rates
    assert "approved 1 min 35 s after it was asked" in _section(html, "time-to-approval")
    assert "27.5 KB" in _section(html, "backup-size")
    # Nothing but the portal: no script at all, no URL to another host.
    assert "<script" not in html
    assert set(re.findall(r'(?:src|href)="(https?://[^"]+)"', html)) == set()


def test_charts_say_no_data_yet_over_nothing(client, viewer):
    client.force_login(viewer)
    html = client.get("/charts/?days=99").content.decode()  # an unknown window: the default
    assert 'class="here">14 days' in html
    for key in CHARTS:
        assert "no data yet" in _section(html, key), key
