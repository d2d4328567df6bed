"""Admin paging of big tables (``portal.lib.pagination``): estimated totals, capped counts."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from portal.lib import pagination
from portal.lib.pagination import EstimatedCountPaginator
from portal.models import Notification, NotificationChannel


@pytest.fixture
def notifications(db):
    channel = NotificationChannel.objects.create(
        name="hook", kind="WEBHOOK", url="http://127.0.0.1:9/hook"
    )
    Notification.objects.bulk_create(
        Notification(channel=channel, kind="TEST", title=f"n{i}", severity="info")
        for i in range(30)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE portal_notification")
    return Notification.objects.order_by("-id")


def test_an_unfiltered_big_table_is_not_counted(notifications, monkeypatch):
    monkeypatch.setattr(pagination, "ESTIMATE_ABOVE", 10)
    with CaptureQueriesContext(connection) as ctx:
        count = EstimatedCountPaginator(notifications, 10).count
    assert count == 30  # ANALYZE saw every row of this small table
    assert not any("COUNT(" in q["sql"].upper() for q in ctx.captured_queries)
    assert "reltuples" in ctx.captured_queries[0]["sql"]


def test_a_small_table_is_counted_exactly(notifications):
    with CaptureQueriesContext(connection) as ctx:
        assert EstimatedCountPaginator(notifications, 10).count == 30
    assert any("COUNT(" in q["sql"].upper() for q in ctx.captured_queries)


def test_a_filtered_list_counts_up_to_the_cap_and_says_so(notifications, monkeypatch):
    monkeypatch.setattr(pagination, "COUNT_AT_MOST", 5)
    paginator = EstimatedCountPaginator(notifications.filter(title__startswith="n1"), 2)
    assert int(paginator.count) == 5 and str(paginator.count) == "5+"  # n1, n10..n19
    assert paginator.num_pages == 3
    exact = EstimatedCountPaginator(notifications.filter(title__in=["n1", "n2"]), 2)
    assert exact.count == 2 and str(exact.count) == "2"
