from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import transaction

from portal.audit import record
from portal.choices import AuditEventType
from portal.models import ApiToken, ApprovalRule, AuditEvent
from portal.tokens import revoke_token


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the audit log is append-only, for everyone, admins included."""

    list_display = ("id", "created", "event_type", "actor", "subject_type", "subject_id")
    list_filter = ("event_type", "subject_type")
    search_fields = ("actor", "subject_id")
    date_hierarchy = "created"
    list_per_page = 100
    show_full_result_count = False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created with `manage.py portal_token` (shown once); here they are revoked."""

    list_display = ("name", "user", "prefix", "created", "last_used", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username", "prefix")
    readonly_fields = ("user", "name", "prefix", "created", "last_used", "revoked_at")
    exclude = ("digest",)
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        found = super().get_actions(request)
        if not request.user.has_perm("portal.manage_portal"):
            found.pop("revoke", None)
        return found

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        if not request.user.has_perm("portal.manage_portal"):
            raise PermissionDenied
        count = sum(revoke_token(token, by=request.user) for token in queryset)
        self.message_user(request, f"Revoked {count} token(s).")


@admin.register(ApprovalRule)
class ApprovalRuleAdmin(admin.ModelAdmin):
    """Multi-signature rules per impact; HIGH can never be weakened below 2 + confirmation."""

    list_display = (
        "impact",
        "required_approvals",
        "require_confirmation",
        "allow_auto_approve",
        "validity_seconds",
        "updated",
    )

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("portal.manage_portal")

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            record(
                AuditEventType.APPROVAL_RULE_CHANGED,
                actor=request.user,
                subject=obj,
                details={
                    "impact": obj.impact,
                    "required_approvals": obj.required_approvals,
                    "require_confirmation": obj.require_confirmation,
                    "allow_auto_approve": obj.allow_auto_approve,
                    "validity_seconds": obj.validity_seconds,
                },
            )
