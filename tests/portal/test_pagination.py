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


def test_a_deep_page_reads_its_ids_first_and_keeps_the_order(notifications, monkeypatch):
    monkeypatch.setattr(pagination, "IDS_FIRST_FROM", 10)
    ordered = notifications.order_by("title", "-id")
    every = list(ordered.values_list("pk", flat=True))  # (``ordered`` stays unevaluated)
    paginator = EstimatedCountPaginator(ordered, 6)
    with CaptureQueriesContext(connection) as ctx:
        rows = [n.pk for n in paginator.page(3).object_list]
    assert rows == every[12:18]
    ids_query, rows_query = (q["sql"] for q in ctx.captured_queries[-2:])
    assert "OFFSET 12" in ids_query and ids_query.count('"portal_notification"."id"') >= 1
    assert '"title"' not in ids_query.split("FROM")[0]  # only the ids are read at the offset
    assert "OFFSET" not in rows_query and " IN (" in rows_query
    # Shallow pages are one query, as Django's own; the last page keeps its orphans.
    with CaptureQueriesContext(connection) as ctx:
        assert [n.pk for n in paginator.page(1).object_list] == every[:6]
    assert len(ctx.captured_queries) == 1
    orphaned = EstimatedCountPaginator(ordered, 7, orphans=3)
    assert orphaned.num_pages == 4
    assert [n.pk for n in orphaned.page(4).object_list] == every[21:]  # 9 rows, not 7 + 2
