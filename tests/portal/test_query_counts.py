"""Query counts independent of page size (issue 17): the portal's admin lists (and the
auth ones it shows), the API's list endpoints, the inbox and the dashboard."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests import query_counts
from tests.query_counts import (
    LARGE,
    ROLES,
    SMALL,
    assert_changelist_flat,
    changelists,
    count_queries,
)

seeded = query_counts.seeded  # the module-scoped world (a fixture)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("model", changelists("portal"))
def test_changelist_queries_do_not_grow_with_page_size(seeded, client, monkeypatch, model, role):
    client.force_login(seeded[role])
    assert_changelist_flat(client, monkeypatch, model)


@pytest.mark.django_db
@pytest.mark.parametrize("model", changelists("auth"))
def test_user_and_group_lists_cost_the_same_at_two_page_sizes(seeded, client, monkeypatch, model):
    client.force_login(seeded["ada-admin"])  # only administrators see them
    assert_changelist_flat(client, monkeypatch, model)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["ada-admin", "anna-approver"])
def test_the_inbox_costs_the_same_whatever_the_page_size(seeded, client, monkeypatch, role):
    from pra.models import PRAAction

    client.force_login(seeded[role])
    assert_changelist_flat(client, monkeypatch, PRAAction, "?awaiting=me")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/pra/actions", "/api/pra/actions?status=COMPLETED", "/api/pra/hosts"]
)
def test_api_lists_cost_the_same_at_two_page_sizes(seeded, client, path):
    client.force_login(seeded["vera-viewer"])
    join = "&" if "?" in path else "?"
    client.get(path)  # the process-wide caches (content types) are filled once
    small, answer = count_queries(client, f"{path}{join}limit={SMALL}")
    large, answer_large = count_queries(client, f"{path}{join}limit={LARGE}")
    if path.startswith("/api/pra/actions"):
        assert len(answer.json()) == SMALL and len(answer_large.json()) == LARGE
    assert small == large, f"{path}: {small} queries at {SMALL} rows, {large} at {LARGE}"


@pytest.mark.django_db
def test_the_api_list_says_what_each_action_says_alone(seeded, client):
    """The bulk reads (signatures, rules, evidence) give exactly the single-action answer."""
    client.force_login(seeded["vera-viewer"])
    listed = client.get("/api/pra/actions?limit=200").json()
    assert any(a["approvals"] for a in listed) and any(a["evidence_ids"] for a in listed)
    for action in listed:
        assert client.get(f"/api/pra/actions/{action['id']}").json() == action


@pytest.mark.django_db
def test_the_dashboard_costs_the_same_with_more_rows_waiting(seeded, client):
    """More proposals waiting, running and finished: not one more query."""
    from pra.models import Host, PRAAction

    client.force_login(seeded["anna-approver"])
    client.get("/")  # the process-wide caches (content types) are filled once
    with CaptureQueriesContext(connection) as first:
        client.get("/")
    now, host = timezone.now(), Host.objects.first()
    for status in ("PROPOSED", "EXECUTING", "COMPLETED"):
        PRAAction.objects.bulk_create(
            PRAAction(
                action="restart_caddy",
                host=host,
                rationale="more",
                impact="MEDIUM",
                proposer_label="otto-operator",
                status=status,
                status_changed_at=now,
                created=now,
            )  # fmt: skip
            for _ in range(5)
        )
    with CaptureQueriesContext(connection) as second:
        assert client.get("/").status_code == 200
    seen = {q["sql"] for q in first.captured_queries}
    extra = [q["sql"][:300] for q in second.captured_queries if q["sql"] not in seen]
    assert len(first) == len(second), extra
