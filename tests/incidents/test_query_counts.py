"""Every incidents admin list costs the same number of queries at 2 and at 12 rows per page."""

from __future__ import annotations

import pytest

from tests import query_counts
from tests.query_counts import ROLES, assert_changelist_flat, changelists

seeded = query_counts.seeded  # the module-scoped world (a fixture)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("model", changelists("incidents"))
def test_changelist_queries_do_not_grow_with_page_size(seeded, client, monkeypatch, model, role):
    client.force_login(seeded[role])
    assert_changelist_flat(client, monkeypatch, model)
