"""Roles are groups; what each may do is declared here, once.

Views and APIs check permissions (``portal.approve_action``), never group
names. ``sync_roles`` makes the groups match this table; it runs from a data
migration and again after every migrate, so models added later pick up the
right permissions without a hand-written migration each time.
"""

from __future__ import annotations

from django.contrib.auth.models import PermissionsMixin
from django.db.models import TextChoices


class Role(TextChoices):
    VIEWER = "viewer", "Viewer (on-call, read-only)"
    OPERATOR = "operator", "Operator (propose, diagnose, run approved)"
    APPROVER = "approver", "Approver (approve or reject)"
    ADMIN = "admin", "Administrator (everything)"


PORTAL_APPS = ("portal", "pra", "incidents", "backups")

# Permission codenames per role, as "app_label.codename". "view_*" means the
# view permission of every model of the portal's apps. Roles are cumulative
# only where listed: an approver is not automatically an operator.
_VIEW = ["portal.view_portal", "view_*"]
ROLE_PERMISSIONS: dict[str, list[str]] = {
    Role.VIEWER: _VIEW,
    Role.OPERATOR: [
        *_VIEW,
        "portal.propose_action",
        "portal.run_diagnostics",
        "portal.execute_action",
    ],
    Role.APPROVER: [*_VIEW, "portal.approve_action"],
    Role.ADMIN: ["*"],
}


def permissions_for(role: str, permission_model, content_type_model) -> list:
    """Resolve a role's declared permissions to Permission rows (given model classes,
    so a migration can pass its historical models)."""
    portal_cts = content_type_model.objects.filter(app_label__in=PORTAL_APPS)
    result = []
    for spec in ROLE_PERMISSIONS[role]:
        if spec == "*":
            return list(permission_model.objects.all())
        if spec == "view_*":
            result.extend(
                permission_model.objects.filter(
                    content_type__in=portal_cts, codename__startswith="view_"
                )
            )
            continue
        app_label, codename = spec.split(".", 1)
        result.extend(
            permission_model.objects.filter(content_type__app_label=app_label, codename=codename)
        )
    return result


def sync_roles(group_model=None, permission_model=None, content_type_model=None) -> None:
    """Create the role groups and set exactly their declared permissions."""
    if group_model is None:
        from django.contrib.auth.models import Group, Permission
        from django.contrib.contenttypes.models import ContentType

        group_model, permission_model, content_type_model = Group, Permission, ContentType
    for role in Role:
        group, _ = group_model.objects.get_or_create(name=role.value)
        group.permissions.set(permissions_for(role, permission_model, content_type_model))


def role_of(user) -> str | None:
    """The user's role name (highest if several), or None."""
    return highest_role(set(user.groups.values_list("name", flat=True)))


def highest_role(names: set[str]) -> str | None:
    """The highest role among these group names, or None."""
    for role in (Role.ADMIN, Role.APPROVER, Role.OPERATOR, Role.VIEWER):
        if role.value in names:
            return role.value
    return None


def may(user: object, perm: str) -> bool:
    """Whether ``user`` holds ``perm``; False for a user model without permissions."""
    return isinstance(user, PermissionsMixin) and user.has_perm(perm)
