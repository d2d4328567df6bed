"""Permission matrix: who may reach what. Later issues add their pages to MATRIX."""

import pytest
from django.contrib.auth.models import Group

from portal.roles import Role
from tests.conftest import ANON

# (url, {persona: expected status}); personas not listed expect 403.
MATRIX = [
    ("/", {"viewer": 200, "operator": 200, "approver": 200, "admin_user": 200, ANON: 302}),
    (
        "/admin/portal/auditevent/",
        {"viewer": 200, "operator": 200, "approver": 200, "admin_user": 200, ANON: 302},
    ),
    ("/admin/portal/auditevent/add/", {ANON: 302}),
    ("/admin/auth/user/", {"admin_user": 200, ANON: 302}),
    ("/admin/auth/user/add/", {"admin_user": 200, ANON: 302}),
    ("/admin/auth/group/", {"admin_user": 200, ANON: 302}),
]


@pytest.mark.parametrize("persona", ["viewer", "operator", "approver", "admin_user", ANON])
@pytest.mark.parametrize(("url", "expected"), MATRIX, ids=[m[0] for m in MATRIX])
def test_permission_matrix(client, request, persona, url, expected):
    if persona != ANON:
        client.force_login(request.getfixturevalue(persona))
    response = client.get(url)
    assert response.status_code == expected.get(persona, 403), (persona, url)


def test_user_without_role_sees_nothing(client, nobody):
    client.force_login(nobody)
    assert client.get("/").status_code == 403


@pytest.mark.django_db
def test_groups_exist_with_declared_permissions():
    names = set(Group.objects.values_list("name", flat=True))
    assert {r.value for r in Role} <= names
    viewer = Group.objects.get(name="viewer")
    codenames = set(viewer.permissions.values_list("codename", flat=True))
    assert "view_portal" in codenames
    assert "view_auditevent" in codenames
    assert not {"approve_action", "propose_action", "manage_portal"} & codenames
    approver = set(
        Group.objects.get(name="approver").permissions.values_list("codename", flat=True)
    )
    assert "approve_action" in approver and "propose_action" not in approver
    operator = set(
        Group.objects.get(name="operator").permissions.values_list("codename", flat=True)
    )
    assert {"propose_action", "run_diagnostics", "execute_action"} <= operator
    assert "approve_action" not in operator
