"""The JSON API: token and session auth, clear 4xx errors, nothing changed on bad input."""

import json

import pytest

from portal.models import AuditEvent
from portal.tokens import create_token, revoke_token
from pra.choices import ActionStatus
from pra.models import PRAAction
from tests.pra.factories import RATIONALE, offline_host

pytestmark = pytest.mark.django_db


@pytest.fixture
def host():
    return offline_host()


def _bearer(user):
    _, raw = create_token(user, "tests")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def _post(client, url, body, auth):
    return client.post(url, data=json.dumps(body), content_type="application/json", **auth)


def _proposal(**overrides):
    return {
        "action": "restart_caddy",
        "host": "dns-1",
        "params": {},
        "rationale": RATIONALE,
    } | overrides


def test_catalog_and_hosts_are_listed(client, viewer, host):
    auth = _bearer(viewer)
    catalog = client.get("/api/pra/catalog", **auth).json()
    assert {c["name"] for c in catalog} >= {"restart_unbound", "reboot_system"}
    container = next(c for c in catalog if c["name"] == "restart_container")
    assert container["params"][0]["name"] == "name"
    hosts = client.get("/api/pra/hosts", **auth).json()
    assert hosts[0]["name"] == "dns-1" and hosts[0]["host_key_fingerprint"].startswith("SHA256:")


def test_propose_approve_flow_over_the_api(client, operator, approver, host):
    created = _post(client, "/api/pra/actions", _proposal(), _bearer(operator))
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "PROPOSED" and body["proposer"] == operator.username
    pending = client.get("/api/pra/actions?status=PROPOSED", **_bearer(approver)).json()
    assert [a["id"] for a in pending] == [body["id"]]
    approved = _post(
        client,
        f"/api/pra/actions/{body['id']}/approve",
        {"fingerprint": body["fingerprint"]},
        _bearer(approver),
    )
    assert approved.status_code == 200, approved.content
    assert approved.json()["status"] == "APPROVED"
    assert approved.json()["approvals"] == [approver.username]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (_proposal(action="restart_container", params={"name": "$(reboot)"}), 400),
        (_proposal(action="nope"), 400),
        (_proposal(host="unknown"), 400),
        (_proposal(rationale="short"), 400),
        (_proposal(params="not-an-object"), 422),
        (_proposal(evidence_ids=["x"]), 422),
        ({"host": "dns-1"}, 422),
    ],
)
def test_bad_proposals_get_a_clear_error_and_change_nothing(client, operator, host, body, status):
    auth = _bearer(operator)
    events = AuditEvent.objects.count()
    response = _post(client, "/api/pra/actions", body, auth)
    assert response.status_code == status, response.content
    assert response.json()  # a JSON body saying what is wrong
    assert not PRAAction.objects.exists()
    assert AuditEvent.objects.count() == events


def test_malformed_json_is_a_4xx(client, operator, host):
    response = client.post(
        "/api/pra/actions", data="{not json", content_type="application/json", **_bearer(operator)
    )
    assert 400 <= response.status_code < 500
    assert not PRAAction.objects.exists()


def test_errors_name_the_problem_with_the_right_status(client, operator, approver, viewer, host):
    created = _post(client, "/api/pra/actions", _proposal(), _bearer(operator)).json()
    action_id, shown = created["id"], {"fingerprint": created["fingerprint"]}
    self_approval = _post(client, f"/api/pra/actions/{action_id}/approve", shown, _bearer(operator))
    assert self_approval.status_code == 403
    viewer_approval = _post(client, f"/api/pra/actions/{action_id}/approve", shown, _bearer(viewer))
    assert viewer_approval.status_code == 403
    unseen = _post(client, f"/api/pra/actions/{action_id}/approve", {}, _bearer(approver))
    assert unseen.status_code == 422  # an approval must say what it approves
    stale = _post(
        client,
        f"/api/pra/actions/{action_id}/approve",
        {"fingerprint": "0" * 64},
        _bearer(approver),
    )
    assert stale.status_code == 409 and stale.json()["error"] == "stale"
    missing = _post(client, "/api/pra/actions/9999/approve", shown, _bearer(approver))
    assert missing.status_code == 404
    no_reason = _post(
        client, f"/api/pra/actions/{action_id}/reject", {"reason": ""}, _bearer(approver)
    )
    assert no_reason.status_code == 400 and no_reason.json()["error"] == "reason"
    execute = _post(client, f"/api/pra/actions/{action_id}/execute", {}, _bearer(operator))
    assert execute.status_code == 409
    assert "needs human approval" in execute.json()["message"]
    assert PRAAction.objects.get().status == ActionStatus.PROPOSED


def test_wrong_or_revoked_tokens_are_refused(client, operator, host):
    assert client.get("/api/pra/hosts", HTTP_AUTHORIZATION="Bearer opp_wrong").status_code == 401
    token, raw = create_token(operator, "soon revoked")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert client.get("/api/pra/hosts", **auth).status_code == 200
    revoke_token(token, by="system:test")
    assert client.get("/api/pra/hosts", **auth).status_code == 401
    assert client.get("/api/pra/hosts").status_code == 401


def test_session_api_writes_need_csrf(operator, host):
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(operator)
    response = csrf_client.post(
        "/api/pra/actions", data=json.dumps(_proposal()), content_type="application/json"
    )
    assert response.status_code in (401, 403)
    assert not PRAAction.objects.exists()


def test_openapi_docs_are_served(client, viewer):
    client.force_login(viewer)
    schema = client.get("/api/openapi.json")
    assert schema.status_code == 200
    assert "/api/pra/actions/{action_id}/approve" in schema.json()["paths"]


def test_remediation_kpis_are_in_metrics(client, operator, approver, host):
    from pra import actions
    from tests.pra.factories import propose

    first = propose(operator, host, "restart_caddy")
    second = propose(operator, host, "restart_unbound")
    actions.approve_action(first, by=approver)
    actions.reject_action(second, by=approver, reason="not needed right now")
    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert 'portal_pra_actions{status="APPROVED"} 1.0' in text
    assert 'portal_pra_actions{status="REJECTED"} 1.0' in text
    assert "portal_pra_proposed 2.0" in text
    assert "portal_pra_approval_ratio 0.5" in text


def test_mcp_scoped_tokens_cannot_use_the_rest_api(client, approver, host):
    """An assistant's token cannot reach the API where approving happens."""
    _, raw = create_token(approver, "assistant", scope="mcp")
    response = client.get("/api/pra/actions", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 401


def test_an_identical_open_proposal_returns_the_existing_action(client, operator, operator2, host):
    """The second identical proposal (another operator, same action, host and params)
    creates nothing: 200, the same id, created false and a message naming it."""
    first = _post(client, "/api/pra/actions", _proposal(), _bearer(operator))
    assert first.status_code == 201 and first.json()["created"] is True
    second = _post(client, "/api/pra/actions", _proposal(), _bearer(operator2))
    assert second.status_code == 200, second.content
    body = second.json()
    assert body["id"] == first.json()["id"] and body["created"] is False
    assert f"#{body['id']}" in body["message"] and "already open" in body["message"]
    assert PRAAction.objects.count() == 1
    other = _post(client, "/api/pra/actions", _proposal(action="reload_caddy"), _bearer(operator))
    assert other.status_code == 201 and other.json()["id"] != body["id"]
