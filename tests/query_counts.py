"""Query counts that stay flat whatever the page size (issue 17), shared by the apps' tests.

``seeded`` fills the test database once per module with every kind of row the portal
has (``bench/year_of_data.py``'s seeder at a small scale: valid rows, the audit chain
intact), inside a transaction rolled back when the module ends. Each test then asks
for one list at two page sizes and compares the number of queries: a per-row query
shows as a difference.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

SMALL, LARGE = 2, 12
SCALE = 0.002  # 200 actions, 20 incidents, 40 backup runs, 1,000 audit events...


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker):
    """The seeded world's personas by name; everything is rolled back after the module."""
    from bench.year_of_data import Seeder
    from incidents.models import GroupingRule

    with django_db_blocker.unblock():
        with transaction.atomic():
            seeder = Seeder(SCALE)
            seeder.run()
            for i in range(3):  # the migrations leave one: a list needs a few
                GroupingRule.objects.create(name=f"extra-{i}", position=200 + i, min_agents=5)
            yield seeder.personas
            transaction.set_rollback(True)


ROLES = ("ada-admin", "vera-viewer")
# One row by design (``OpsPolicy.current()``): its list has no page size to vary.
SINGLETONS = {"incidents.OpsPolicy"}


def changelists(app_label: str) -> list:
    """pytest params: every admin changelist of the app (the model label as the id)."""
    return [
        pytest.param(model, id=model._meta.label)
        for model in admin.site._registry
        if model._meta.app_label == app_label
        and model._meta.managed
        and model._meta.label not in SINGLETONS
    ]


def count_queries(client, url: str) -> tuple[int, Any]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(ctx.captured_queries), response


def assert_changelist_flat(client, monkeypatch, model, url_suffix: str = "") -> None:
    """The changelist costs as many queries at LARGE rows per page as at SMALL, and the
    data really fills more than SMALL rows (so a per-row query would show)."""
    model_admin = admin.site._registry[model]
    meta = model._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist") + url_suffix
    counts = {}
    client.get(url)  # the process-wide caches (content types) are filled once
    for size in (SMALL, LARGE):
        monkeypatch.setattr(model_admin, "list_per_page", size)
        counts[size], response = count_queries(client, url)
        shown = len(response.context["cl"].result_list)
        if size == LARGE:
            assert shown > SMALL, f"{meta.label}: only {shown} rows, the test would prove nothing"
    assert counts[SMALL] == counts[LARGE], (
        f"{meta.label}{url_suffix}: {counts[SMALL]} queries at {SMALL} rows per page, "
        f"{counts[LARGE]} at {LARGE}"
    )
