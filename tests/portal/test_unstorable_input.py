"""Text PostgreSQL cannot store (NUL, lone surrogates) is refused at every way in: a
clear 4xx naming the field, nothing written, no traceback or SQL in the answer.

Real PostgreSQL (it is the database that refuses NUL), Django's test client, and
``manage.py`` as a subprocess for the command line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from portal.lib.text import UnstorableText, find_unstorable, refuse_unstorable
from portal.models import AuditEvent
from portal.tokens import create_token
from pra.models import DiagnosticRun, PRAAction
from tests.factories import RATIONALE, offline_host, propose
from tests.stack import BASE_DIR, stack_env

pytestmark = pytest.mark.django_db

LEAKS = ("Traceback", "psycopg", "SELECT", "INSERT", "NUL character", "DataError")
BAD = ["bad\x00text", "bad\ud800text"]


def _bearer(user) -> dict[str, str]:
    _, raw = create_token(user, "tests")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def _post(client, url: str, body: dict, auth: dict):
    # json.dumps writes "\u0000" and "\ud800" escapes, as a real client would send them.
    return client.post(url, data=json.dumps(body), content_type="application/json", **auth)


def _assert_refused(response, field: str) -> None:
    assert 400 <= response.status_code < 500, response.content
    text = response.content.decode()
    assert field in text, text
    assert "cannot be stored" in text
    for leak in LEAKS:
        assert leak not in text, text


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("field", ["rationale", "host", "action", "params"])
def test_propose_refuses_unstorable_text(client, operator, bad, field):
    offline_host()
    body = {"action": "restart_caddy", "host": "dns-1", "params": {}, "rationale": RATIONALE}
    body[field] = {"name": bad} if field == "params" else body[field] + bad
    auth = _bearer(operator)
    before = AuditEvent.objects.count()
    response = _post(client, "/api/pra/actions", body, auth)
    _assert_refused(response, "params.name" if field == "params" else field)
    assert PRAAction.objects.count() == 0
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize("bad", BAD)
def test_approve_and_reject_refuse_unstorable_text(client, operator, approver, bad):
    action = propose(operator, offline_host(), "restart_caddy")
    auth = _bearer(approver)
    before = AuditEvent.objects.count()
    approve = _post(
        client,
        f"/api/pra/actions/{action.pk}/approve",
        {"fingerprint": action.approval_fingerprint(), "comment": bad},
        auth,
    )
    _assert_refused(approve, "comment")
    reject = _post(client, f"/api/pra/actions/{action.pk}/reject", {"reason": bad}, auth)
    _assert_refused(reject, "reason")
    action.refresh_from_db()
    assert action.status == "PROPOSED"
    assert AuditEvent.objects.count() == before


def test_a_nul_in_the_url_path_is_a_400(client, operator):
    offline_host()
    response = _post(
        client,
        "/api/pra/hosts/dns%00-1/diagnostics",
        {"name": "service_status", "params": {"unit": "unbound"}},
        _bearer(operator),
    )
    _assert_refused(response, "URL path")
    assert DiagnosticRun.objects.count() == 0


def test_a_nul_in_an_admin_search_is_a_400(client, viewer):
    client.force_login(viewer)
    response = client.get("/admin/pra/praaction/", {"q": "unbound\x00"})
    _assert_refused(response, "query parameter 'q'")


def test_management_commands_refuse_arguments_that_are_not_utf8():
    """argv cannot carry NUL, but bytes that are not UTF-8 arrive as lone surrogates."""
    result = subprocess.run(
        [sys.executable, "manage.py", "pra_host", "add", b"dns-\xff", "10.0.0.1"],
        env=stack_env(), cwd=BASE_DIR, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "argument 3 contains a character that cannot be stored" in result.stderr
    assert "Traceback" not in result.stderr


def test_find_unstorable_names_the_path_of_nested_values():
    assert find_unstorable({"a": [1, {"b": "x\x00"}]}) == "a[1].b"
    assert find_unstorable({"ok": "é ✓ \U0001f600"}) is None
    with pytest.raises(UnstorableText, match="note: contains a character"):
        refuse_unstorable("x\udfff", "note")
    assert refuse_unstorable({"k": "v"}, "f") == {"k": "v"}
