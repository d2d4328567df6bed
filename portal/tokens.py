"""Personal API/MCP tokens: shown once, stored as SHA-256, revocable."""

from __future__ import annotations

import hashlib
import secrets

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.models import ApiToken

RAW_PREFIX = "opp_"


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_token(
    user, name: str, *, scope: str = ApiToken.Scope.API, by: Actor | str = "system:cli"
) -> tuple[ApiToken, str]:
    """Create a token for ``user``; the raw value is returned once and never stored.

    ``scope`` is where it works: REST API tokens can do what the user's role allows,
    including approving; MCP tokens work only on the MCP server, which cannot approve.
    """
    if scope not in ApiToken.Scope.values:
        raise ValueError(f"Unknown token scope {scope!r}.")
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValueError("A token needs a name of 1 to 100 characters.")
    raw = RAW_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name, scope=scope, prefix=raw[:12], digest=_digest(raw)
        )
        record(
            AuditEventType.TOKEN_CREATED,
            actor=by,
            subject=token,
            details={
                "user": user.get_username(),
                "name": name,
                "scope": scope,
                "prefix": token.prefix,
            },
        )
    return token, raw


def revoke_token(token: ApiToken, *, by: Actor | str) -> bool:
    with transaction.atomic():
        won = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if won:
            record(
                AuditEventType.TOKEN_REVOKED,
                actor=by,
                subject=token,
                details={"user": token.user.get_username(), "prefix": token.prefix},
            )
    return bool(won)


def authenticate_token(raw: str | None, *, scope: str) -> User | None:
    """The active user behind a raw token valid for ``scope``, or None."""
    if not raw or not raw.startswith(RAW_PREFIX) or len(raw) > 200:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=_digest(raw), scope=scope, revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used is None or (now - token.last_used).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)
    return token.user
