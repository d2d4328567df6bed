"""``portal.tokens``: personal tokens shown once, stored hashed, scoped, revocable, audited."""

from __future__ import annotations

import hashlib

import pytest

from portal.models import ApiToken, AuditEvent
from portal.tokens import authenticate_token, create_token, revoke_token

pytestmark = pytest.mark.django_db


def test_a_token_is_shown_once_and_stored_only_as_its_hash(operator):
    token, raw = create_token(operator, "laptop", scope="api", by="system:test")
    stored = ApiToken.objects.get(pk=token.pk)
    assert raw.startswith("opp_") and stored.prefix == raw[:12]
    assert stored.digest == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {stored.digest, stored.name, stored.prefix}
    event = AuditEvent.objects.get(event_type="TOKEN_CREATED")
    assert event.details == {
        "user": operator.username, "name": "laptop", "scope": "api", "prefix": stored.prefix
    }  # fmt: skip
    assert raw not in str(event.details)


def test_a_token_works_only_for_its_scope_and_its_active_user(operator):
    _, api_raw = create_token(operator, "cli", scope="api")
    _, mcp_raw = create_token(operator, "assistant", scope="mcp")
    assert authenticate_token(api_raw, scope="api") == operator
    assert authenticate_token(api_raw, scope="mcp") is None
    assert authenticate_token(mcp_raw, scope="mcp") == operator
    assert authenticate_token(mcp_raw, scope="api") is None
    operator.is_active = False
    operator.save(update_fields=["is_active"])
    assert authenticate_token(api_raw, scope="api") is None


@pytest.mark.parametrize("raw", [None, "", "opp_unknown-token-value", "x" * 50, "opp_" + "a" * 300])
def test_anything_else_authenticates_nobody(raw, operator):
    create_token(operator, "cli")
    assert authenticate_token(raw, scope="api") is None


def test_revoking_takes_effect_at_once_and_is_audited_once(operator, admin_user):
    token, raw = create_token(operator, "cli")
    assert revoke_token(token, by=admin_user.username) is True
    assert revoke_token(token, by=admin_user.username) is False  # already revoked
    assert authenticate_token(raw, scope="api") is None
    assert AuditEvent.objects.filter(event_type="TOKEN_REVOKED").count() == 1


def test_bad_names_and_scopes_are_refused_and_create_nothing(operator):
    for name in ("", "   ", "n" * 101):
        with pytest.raises(ValueError, match="1 to 100 characters"):
            create_token(operator, name)
    with pytest.raises(ValueError, match="Unknown token scope 'admin'"):
        create_token(operator, "cli", scope="admin")
    assert not ApiToken.objects.exists()
    assert not AuditEvent.objects.filter(event_type="TOKEN_CREATED").exists()


def test_last_used_is_written_at_most_once_a_minute(operator):
    token, raw = create_token(operator, "cli")
    authenticate_token(raw, scope="api")
    first = ApiToken.objects.get(pk=token.pk).last_used
    assert first is not None
    authenticate_token(raw, scope="api")
    assert ApiToken.objects.get(pk=token.pk).last_used == first
