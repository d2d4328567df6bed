"""Portal-wide writes: users and their roles; approval rules, notification channels and
escalation levels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.models import User as UserModel
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Field

from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.errors import RequestRefused
from portal.lib import configedit
from portal.lib.permissions import require_perm
from portal.lib.text import UnstorableText, refuse_unstorable
from portal.models import ApprovalRule, EscalationLevel, NotificationChannel
from portal.roles import Role, role_of

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
        _lock_roles()
        found = User.objects.select_for_update().filter(**{User.USERNAME_FIELD: username}).first()
        created = found is None
        user = User(**{User.USERNAME_FIELD: username}) if found is None else found
        old_role = None if created else role_of(user)
        reactivated = not created and not user.is_active
        if old_role == Role.ADMIN and role != Role.ADMIN:
            try:
                _keep_an_admin(user.pk)
            except RequestRefused as exc:
                raise ValidationError(f"Refused: {exc.message}.") from None
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
        user.is_superuser = False  # one role: what it may do comes from the role's group
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        user.user_permissions.clear()
        details: dict[str, Any] = {
            "username": username, "role": role, "password_changed": password is not None,
        }  # fmt: skip
        if not created and old_role != role:
            details["previous_role"] = old_role
        if reactivated:
            details["reactivated"] = True
        record(
            AuditEventType.USER_CREATED if created else AuditEventType.USER_UPDATED,
            actor=by,
            subject=user,
            details=details,
        )
    return user, created


def _lock_roles() -> None:
    """Serialize every change of who holds a role (the admin group's row): two admins
    demoting each other at once must not both succeed."""
    Group.objects.select_for_update().filter(name=Role.ADMIN).first()


def _keep_an_admin(user_pk: int) -> None:
    """Refuse a change that would leave no active administrator but ``user_pk``'s."""
    others = User.objects.filter(is_active=True, groups__name=Role.ADMIN).exclude(pk=user_pk)
    if not others.exists():
        raise RequestRefused(
            "last_admin", "the portal would be left without an active administrator"
        )


USER_EDITABLE = ("email", "role", "is_active", "password")


def create_user(
    *, by: UserModel | Actor | str, username: str, role: str, password: str, email: str = ""
) -> AuthUser:
    """Add a portal user with one role (administrators only; ``set_user``'s checks and its
    one USER_CREATED event). An existing name is refused, not updated."""
    actor = _manager(by, "manage users")
    _storable({"username": username, "email": email})
    if User.objects.filter(**{User.USERNAME_FIELD: username}).exists():
        raise RequestRefused("exists", f"a user named {username!r} already exists")
    try:
        if email:
            validate_email(email)
        user, _created = set_user(username, role=role, password=password, email=email, by=actor)
    except ValidationError as exc:
        raise RequestRefused("invalid", " ".join(exc.messages)) from None
    except IntegrityError:  # the same name added at the same moment
        raise RequestRefused("exists", f"a user named {username!r} already exists") from None
    return user


def update_user(user: AuthUser | int, *, by: UserModel | Actor | str, **changes: Any) -> AuthUser:
    """Change a user's e-mail, role, active flag or password (administrators only).

    One USER_UPDATED event naming what changed (a role as from/to, a password only as
    ``password_changed``), none when nothing did. Users are deactivated, never deleted:
    approvals and the audit log name them. Refuses, changing nothing, to leave the portal
    without an active administrator."""
    actor = _manager(by, "manage users")
    unknown = set(changes) - set(USER_EDITABLE)
    if unknown:
        raise RequestRefused("invalid", f"not a user field: {', '.join(sorted(unknown))}")
    _storable({k: v for k, v in changes.items() if k != "password"})
    with transaction.atomic():
        _lock_roles()
        pk = user if isinstance(user, int) else user.pk
        row = User.objects.select_for_update().filter(pk=pk).first()
        if row is None:
            raise RequestRefused("not_found", f"no user #{pk}")
        done: dict[str, Any] = {}
        email = changes.get("email")
        if email is not None and email != row.email:
            try:
                if email:
                    validate_email(email)
            except ValidationError:
                raise RequestRefused("email", f"not an e-mail address: {email!r}") from None
            row.email = done["email"] = email
        active = changes.get("is_active")
        if active is not None and bool(active) != row.is_active:
            row.is_active = done["is_active"] = bool(active)
        old_role = role_of(row)
        role = changes.get("role")
        if role is not None and role != old_role:
            if role not in Role.values:
                raise RequestRefused("role", f"unknown role {role!r}")
            done["role"] = {"from": old_role, "to": role}
        password = changes.get("password")
        if password:
            try:
                validate_password(password, row)
            except ValidationError as exc:
                raise RequestRefused("password", " ".join(exc.messages)) from None
            row.set_password(password)
            done["password_changed"] = True
        if not done:
            return row
        leaves_admin = not row.is_active or (role is not None and role != Role.ADMIN)
        if old_role == Role.ADMIN and leaves_admin:
            _keep_an_admin(pk)
        if "role" in done:
            row.is_superuser = False  # one role: nothing granted around it
        row.save()
        if "role" in done:
            row.groups.set([Group.objects.get(name=role)])
            row.user_permissions.clear()
        record(
            AuditEventType.USER_UPDATED,
            actor=actor,
            subject=row,
            details={"username": row.get_username(), **done},
        )
    return row


def password_changed(user: AuthUser) -> None:
    """A user changed their own password (the admin's password page): one USER_UPDATED."""
    record(
        AuditEventType.USER_UPDATED,
        actor=Actor.of(user),
        subject=user,
        details={"username": user.get_username(), "password_changed": True, "own": True},
    )


# --- Portal configuration: approval rules, notification channels, escalation levels ----
# Administrators only. Each write is validated (full_clean), done in one transaction with
# exactly one audit event; the admin (and anything else) calls these.

MANAGE_PERMISSION = "portal.manage_portal"

APPROVAL_RULE_EDITABLE = (
    "required_approvals",
    "require_confirmation",
    "allow_auto_approve",
    "validity_seconds",
)

CHANNEL_EDITABLE = (
    "name",
    "kind",
    "url",
    "url_env",
    "recipients",
    "kinds",
    "min_severity",
    "enabled",
)

ESCALATION_EDITABLE = ("level", "name", "delay_minutes", "channels")


def _manager(by: UserModel | Actor | str, what: str) -> Actor:
    actor = Actor.of(by)
    require_perm(actor.user, MANAGE_PERMISSION, what)
    return actor


def _storable(fields: dict[str, Any]) -> None:
    try:
        refuse_unstorable({k: v for k, v in fields.items() if isinstance(v, str)})
    except UnstorableText as exc:
        raise RequestRefused("invalid", str(exc)) from None


def update_approval_rule(
    rule: ApprovalRule | int, *, by: UserModel | Actor | str, **changes: Any
) -> ApprovalRule:
    """Change how many signatures an impact needs (``ApprovalRule.clean``: HIGH never
    below 2 + a typed confirmation); one APPROVAL_RULE_CHANGED event, none if unchanged."""
    actor = _manager(by, "change approval rules")
    pk = rule.pk if isinstance(rule, ApprovalRule) else rule
    with transaction.atomic():
        saved, diff = configedit.update(
            ApprovalRule, pk, changes, editable=APPROVAL_RULE_EDITABLE, error=RequestRefused,
            what="approval rule",
        )  # fmt: skip
        if diff:
            record(
                AuditEventType.APPROVAL_RULE_CHANGED,
                actor=actor,
                subject=saved,
                details={
                    "impact": saved.impact,
                    **configedit.values(saved, APPROVAL_RULE_EDITABLE),
                    "changes": diff,
                },
            )
    return saved


def channel_details(channel: NotificationChannel) -> dict[str, Any]:
    """What the audit log keeps of a channel: never the URL itself."""
    return {
        "name": channel.name,
        "kind": channel.kind,
        "url_env": channel.url_env,
        "has_plain_url": bool(channel.url),
        "recipients": len(channel.recipient_list),
        "kinds": list(channel.kinds or []),
        "min_severity": channel.min_severity,
        "enabled": channel.enabled,
    }


def create_channel(*, by: UserModel | Actor | str, **fields: Any) -> NotificationChannel:
    """Add a notification channel (one NOTIFICATION_CONFIG_CHANGED event, "created")."""
    actor = _manager(by, "change notification settings")
    _storable(fields)
    with transaction.atomic():
        channel = configedit.create(
            NotificationChannel, fields, editable=CHANNEL_EDITABLE, error=RequestRefused,
            what="notification channel",
        )  # fmt: skip
        record(
            AuditEventType.NOTIFICATION_CONFIG_CHANGED,
            actor=actor,
            subject=channel,
            details={"change": "created", **channel_details(channel)},
        )
    return channel


def update_channel(
    channel: NotificationChannel | int, *, by: UserModel | Actor | str, **changes: Any
) -> NotificationChannel:
    """Change a notification channel (one NOTIFICATION_CONFIG_CHANGED event, "updated";
    none if unchanged). The event says whether a plain URL is set, never the URL."""
    actor = _manager(by, "change notification settings")
    _storable(changes)
    pk = channel.pk if isinstance(channel, NotificationChannel) else channel
    with transaction.atomic():
        saved, diff = configedit.update(
            NotificationChannel, pk, changes, editable=CHANNEL_EDITABLE, error=RequestRefused,
            what="notification channel",
        )  # fmt: skip
        if diff:
            record(
                AuditEventType.NOTIFICATION_CONFIG_CHANGED,
                actor=actor,
                subject=saved,
                details={
                    "change": "updated",
                    **channel_details(saved),
                    "changed": sorted(diff),
                },
            )
    return saved


def delete_channel(
    channel: NotificationChannel | int, *, by: UserModel | Actor | str
) -> NotificationChannel:
    """Remove a notification channel (one NOTIFICATION_CONFIG_CHANGED event, "deleted")."""
    actor = _manager(by, "change notification settings")
    pk = channel.pk if isinstance(channel, NotificationChannel) else channel
    with transaction.atomic():
        current = NotificationChannel.objects.filter(pk=pk).first()
        if current is None:
            raise RequestRefused("not_found", f"No notification channel #{pk}.")
        record(
            AuditEventType.NOTIFICATION_CONFIG_CHANGED,
            actor=actor,
            subject=current,
            details={"change": "deleted", **channel_details(current)},
        )
        return configedit.delete(
            NotificationChannel, pk, error=RequestRefused, what="notification channel"
        )


def _level_details(level: EscalationLevel) -> dict[str, Any]:
    return {
        "level": level.level,
        "name": level.name,
        "delay_minutes": level.delay_minutes,
        "channels": sorted(c.name for c in level.channels.all()),
    }


def create_escalation_level(*, by: UserModel | Actor | str, **fields: Any) -> EscalationLevel:
    """Add an escalation level and the channels it reaches (one NOTIFICATION_CONFIG_CHANGED)."""
    actor = _manager(by, "change notification settings")
    _storable(fields)
    with transaction.atomic():
        level = configedit.create(
            EscalationLevel, fields, editable=ESCALATION_EDITABLE, error=RequestRefused,
            what="escalation level",
        )  # fmt: skip
        record(
            AuditEventType.NOTIFICATION_CONFIG_CHANGED,
            actor=actor,
            subject=level,
            details={"change": "created", **_level_details(level)},
        )
    return level


def update_escalation_level(
    level: EscalationLevel | int, *, by: UserModel | Actor | str, **changes: Any
) -> EscalationLevel:
    """Change an escalation level's delay, name or channels (one NOTIFICATION_CONFIG_CHANGED
    event; none if unchanged)."""
    actor = _manager(by, "change notification settings")
    _storable(changes)
    pk = level.pk if isinstance(level, EscalationLevel) else level
    with transaction.atomic():
        saved, diff = configedit.update(
            EscalationLevel, pk, changes, editable=ESCALATION_EDITABLE, error=RequestRefused,
            what="escalation level",
        )  # fmt: skip
        if diff:
            record(
                AuditEventType.NOTIFICATION_CONFIG_CHANGED,
                actor=actor,
                subject=saved,
                details={"change": "updated", **_level_details(saved), "changes": diff},
            )
    return saved
