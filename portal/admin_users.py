"""People and roles in the admin, every change through an audited action.

Django's own user and group pages write users, passwords, group memberships and
permissions with no audit event, and let an administrator hand out any permission one
by one, around the roles. Here a user has exactly one role (``portal.roles``), is added
with ``create_user`` and changed with ``update_user`` (one audit event each); users are
deactivated, never deleted (approvals and the audit log name them). The role groups are
read-only: what each role may do is declared in code and re-applied after every migrate.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.forms import PasswordChangeForm
from django.contrib.auth.models import Group, User
from django.contrib.auth.views import PasswordChangeView
from django.db import transaction
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from portal import actions as portal_actions
from portal.admin_base import AuditedConfigAdmin
from portal.admin_display import time_column
from portal.roles import Role, highest_role, role_of

MANAGE_PORTAL = portal_actions.MANAGE_PERMISSION

for _model in (User, Group):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)


def _check_passwords(form: forms.BaseForm, *, required: bool) -> None:
    """The two password boxes must match (the action validates the password itself)."""
    first = form.cleaned_data.get("password")
    second = form.cleaned_data.get("password_again")
    if (first or second) and first != second:
        form.add_error("password_again", "The two passwords differ.")
    elif required and not first:
        form.add_error("password", "A new user needs a password.")


def _password_fields(required: bool) -> dict[str, forms.Field]:
    widget = forms.PasswordInput(attrs={"autocomplete": "new-password"})
    help_text = "" if required else "Leave empty to keep the current password."
    return {
        "password": forms.CharField(
            label="Password", required=False, widget=widget, strip=False, help_text=help_text
        ),
        "password_again": forms.CharField(
            label="Password (again)", required=False, widget=widget, strip=False
        ),
    }


class UserAddForm(forms.ModelForm):
    role = forms.ChoiceField(choices=Role.choices)

    class Meta:
        model = User
        fields = ["username", "email"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields.update(_password_fields(required=True))

    def clean(self) -> dict[str, Any] | None:
        data = super().clean()
        _check_passwords(self, required=True)
        return data


class UserChangeForm(forms.ModelForm):
    role = forms.ChoiceField(choices=Role.choices)

    class Meta:
        model = User
        fields = ["email", "is_active"]
        help_texts = {"is_active": "Untick to deactivate: the user can no longer sign in."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields.update(_password_fields(required=False))
        if self.instance.pk:
            self.fields["role"].initial = role_of(self.instance)

    def clean(self) -> dict[str, Any] | None:
        data = super().clean()
        _check_passwords(self, required=False)
        return data


@admin.register(User)
class PortalUserAdmin(AuditedConfigAdmin):
    list_display = ("username", "role", "email", "is_active", time_column("last_login"))
    list_filter = ("is_active", "groups")
    search_fields = ("username", "email")
    ordering = ("username",)
    actions = None
    readonly_fields = ("last_login", "date_joined")

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = UserChangeForm if obj is not None else UserAddForm
        kwargs["fields"] = None
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            fields = ["username", "email", "role", "password", "password_again"]
        else:
            fields = ["email", "role", "is_active", "password", "password_again",
                      "last_login", "date_joined"]  # fmt: skip
        return [(None, {"fields": fields})]

    @admin.display(description="role")
    def role(self, obj: User) -> str:
        # From the prefetched groups: one query for the page, not one per row.
        role = highest_role({group.name for group in obj.groups.all()}) or "none"
        # A superuser (createsuperuser) holds everything whatever its group: say so.
        return f"{role} + superuser (set a role to end it)" if obj.is_superuser else role

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(MANAGE_PORTAL)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(MANAGE_PORTAL)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deactivate instead: approvals and the audit log name the user

    def config_create(self, request, fields: dict[str, Any]) -> User:
        return portal_actions.create_user(
            by=request.user,
            username=fields["username"],
            role=fields["role"],
            password=fields["password"],
            email=fields.get("email") or "",
        )

    def config_update(self, request, obj: User, changes: dict[str, Any]) -> User:
        changes.pop("password_again", None)
        if not changes.get("password"):
            changes.pop("password", None)
        user = portal_actions.update_user(obj.pk, by=request.user, **changes)
        if "password" in changes and user.pk == request.user.pk:
            update_session_auth_hash(request, user)  # one's own new password: stay signed in
        return user

    @method_decorator(sensitive_post_parameters("password", "password_again"))
    def add_view(self, request, form_url="", extra_context=None):
        return super().add_view(request, form_url, extra_context)

    @method_decorator(sensitive_post_parameters("password", "password_again"))
    def change_view(self, request, object_id, form_url="", extra_context=None):
        return super().change_view(request, object_id, form_url, extra_context)

    def log_addition(self, request, obj, message):
        return None  # the audit log has USER_CREATED

    def log_change(self, request, obj, message):
        return None


@admin.register(Group)
class RoleGroupAdmin(admin.ModelAdmin):
    """The roles, read-only: their permissions come from ``portal.roles``."""

    list_display = ("name", "members", "permission_count")
    fields = ("name", "members", "permission_list")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("permissions", "user_set")

    @admin.display(description="members")
    def members(self, obj: Group) -> str:
        return ", ".join(sorted(u.get_username() for u in obj.user_set.all())) or "nobody"

    @admin.display(description="permissions")
    def permission_count(self, obj: Group) -> int:
        return len(obj.permissions.all())

    @admin.display(description="permissions")
    def permission_list(self, obj: Group) -> str:
        return ", ".join(sorted(p.codename for p in obj.permissions.all()))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AuditedPasswordChangeForm(PasswordChangeForm):
    def save(self, commit: bool = True) -> Any:
        with transaction.atomic():
            user = super().save(commit)
            portal_actions.password_changed(user)
        return user


@sensitive_post_parameters()
def own_password_change(request: HttpRequest) -> HttpResponseBase:
    """The admin's "change my password" page, with its audit event in the same
    transaction as the new password."""
    view = PasswordChangeView.as_view(
        form_class=AuditedPasswordChangeForm,
        success_url=reverse("admin:password_change_done"),
        template_name="registration/password_change_form.html",
        extra_context={**admin.site.each_context(request), "title": "Password change"},
    )
    request.current_app = admin.site.name
    return view(request)
