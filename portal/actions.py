"""Portal-wide writes: users and their roles."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Field

from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.roles import Role

if TYPE_CHECKING:
    from django.contrib.auth.models import User as AuthUser

User = get_user_model()


def set_user(
    username: str,
    *,
    role: str,
    password: str | None = None,
    email: str = "",
    by: Actor | str = "system:cli",
    check_password: bool = True,
) -> tuple[AuthUser, bool]:
    """Create or update a portal user with exactly one role.

    Every role gets admin-site access (the admin is the main UI); what they can
    do there is decided by the role's permissions. Raises ``ValidationError``
    on a bad name, role or password, changing nothing.
    """
    if role not in Role.values:
        raise ValidationError(f"Unknown role {role!r}; choose one of {', '.join(Role.values)}.")
    username_field = User._meta.get_field(User.USERNAME_FIELD)
    assert isinstance(username_field, Field)  # USERNAME_FIELD names a concrete field
    try:
        username_field.run_validators(username)
    except ValidationError as exc:
        reason = "; ".join(exc.messages)
        raise ValidationError(f"Invalid user name {username!r}: {reason}") from None
    if not username:
        raise ValidationError("A user name is required.")

    with transaction.atomic():
        found = User.objects.select_for_update().filter(**{User.USERNAME_FIELD: username}).first()
        created = found is None
        user = User(**{User.USERNAME_FIELD: username}) if found is None else found
        if password is not None:
            if check_password:
                validate_password(password, user)
            user.set_password(password)
        elif created:
            raise ValidationError("A new user needs a password.")
        if email:
            user.email = email
        user.is_staff = True
        user.is_active = True
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        record(
            AuditEventType.USER_CREATED if created else AuditEventType.USER_UPDATED,
            actor=by,
            subject=user,
            details={"username": username, "role": role, "password_changed": password is not None},
        )
    return user, created
