"""The actions layer's permission check, one copy for every app."""

from __future__ import annotations

from django.contrib.auth.models import PermissionsMixin

from portal.errors import RequestRefused


def require_perm(
    user: object | None,
    perm: str,
    what: str,
    error: type[RequestRefused] = RequestRefused,
) -> None:
    """Refuse (``error("permission", ...)``) a user without ``perm``.

    ``user`` None is a system caller (a job, a management command run by the
    operator of the machine): the caller already decided it may act. A user
    model without Django's permissions holds none (as ``portal.roles.may``).
    ``what`` completes "You are not allowed to ...".
    """
    if user is None:
        return
    if not (isinstance(user, PermissionsMixin) and user.has_perm(perm)):
        raise error("permission", f"You are not allowed to {what}.")
