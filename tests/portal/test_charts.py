"""The charts page: server-rendered SVG from real rows (PostgreSQL), a bounded query cost,
nothing fetched from anywhere, "no data yet" over nothing."""

from __future__ import annotations

import re

import pytest

from tests.portal.dashboard_world import history

pytestmark = pytest.mark.django_db

CHARTS = ("incidents-per-day", "mttd-per-day", "mttr-per-day", "autopatch-rates",
          "time-to-approval", "backup-size", "backup-duration", "drill-restore-times")  # fmt: skip


def _section(html: str, key: str) -> str:
    found = re.search(rf'<section id="chart-{key}".*?</section>', html, re.S)
    assert found is not None, f"no chart {key} on the page"
    return found[0]


def test_every_chart_draws_the_rows_it_is_about(
    client, viewer, operator, approver, django_assert_max_num_queries
):
    history(operator, days=3, tag="a")
    client.force_login(viewer)
    with django_assert_max_num_queries(25):
        small = client.get("/charts/?days=14")
    history(operator, days=12, tag="b")
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
    assert "target 2 min" in _section(html, "mttd-per-day")
    assert "target 10 min" in _section(html, "mttr-per-day")
    rates = _section(html, "autopatch-rates")
    assert "success target 95 %" in rates and "rollback target 2 %" in rates
    assert "approved 1 min 35 s after it was asked" in _section(html, "time-to-approval")
    assert "27.5 KB" in _section(html, "backup-size")
    drills = _section(html, "drill-restore-times")
    # The RTO target's dashed line, named with its sources; each drill against it.
    assert "target 3 min 20 s (a-cache, b-cache)" in drills and 'class="target"' in drills
    assert "restore 3 min 10 s (target 3 min 20 s, within target)" in drills  # day 8
    assert "restore 3 min 50 s (target 3 min 20 s, over target)" in drills  # day 10
    assert "2 failed drill(s) in the window" in drills and ">FAILED<" in drills
    # Nothing but the portal: no script at all, no URL to another host.
    assert "<script" not in html
    assert set(re.findall(r'(?:src|href)="(https?://[^"]+)"', html)) == set()


def test_charts_say_no_data_yet_over_nothing(client, viewer):
    client.force_login(viewer)
    html = client.get("/charts/?days=99").content.decode()  # an unknown window: the default
    assert 'class="here">14 days' in html
    for key in CHARTS:
        assert "no data yet" in _section(html, key), key
