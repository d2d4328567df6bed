"""The actions layer's permission check, one copy for every app."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from django.contrib.auth.models import AbstractBaseUser

from portal.errors import RequestRefused


@runtime_checkable
class PermissionHolder(Protocol):
    """A user model with Django's permissions (``PermissionsMixin``, ``AnonymousUser``)."""

    def has_perm(self, perm: str) -> bool: ...


def require_perm(
    user: PermissionHolder | AbstractBaseUser | None,
    perm: str,
    what: str,
    error: type[RequestRefused] = RequestRefused,
) -> None:
    """Refuse (``error("permission", ...)``) a user without ``perm``.

    ``user`` None is a system caller (a job, a management command run by the
    operator of the machine): the caller already decided it may act. A user
    model without permissions at all holds none. ``what`` completes "You are not
    allowed to ...".
    """
    if user is None:
        return
    if not (isinstance(user, PermissionHolder) and user.has_perm(perm)):
        raise error("permission", f"You are not allowed to {what}.")
