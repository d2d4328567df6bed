"""Admin pages of maintenance windows and change freezes (administrators edit, everyone
with the portal's view role reads). Every save and delete goes through ``pra.windows``
(validated, one audit event per change) by way of ``AuditedConfigAdmin``: a refusal rolls
the page back and is shown on it ("Not saved: ..."). The admin's own change log is not
used."""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone

from portal.admin_base import AuditedConfigAdmin, ReadOnlyAdmin
from pra import windows
from pra.models import ChangeFreeze, MaintenanceWindow, WindowOpening


class _AdminOnly(AuditedConfigAdmin):
    actions = None  # no bulk delete: each delete is one audited change

    def has_add_permission(self, request):
        return request.user.has_perm(windows.MANAGE_PERMISSION)

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(windows.MANAGE_PERMISSION)

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm(windows.MANAGE_PERMISSION)

    # The audit log has the event; no admin LogEntry. (Django 5.x logs deletes through
    # log_deletions; log_deletion is its deprecated per-object form.)
    def log_addition(self, request, obj, message):
        return None

    def log_change(self, request, obj, message):
        return None

    def log_deletions(self, request, queryset):
        return None


@admin.register(MaintenanceWindow)
class MaintenanceWindowAdmin(_AdminOnly):
    list_display = ("name", "recurrence", "duration_minutes", "timezone", "scope", "next_open",
                    "enabled")  # fmt: skip
    list_filter = ("enabled",)
    filter_horizontal = ("backup_sources",)
    fields = ("name", "description", "cron", ("weekday", "start_time"), "duration_minutes",
              "timezone", "host_tag", "backup_sources", "enabled")  # fmt: skip

    @admin.display(description="recurrence")
    def recurrence(self, obj):
        if obj.cron:
            return f"cron {obj.cron}"
        return f"{obj.get_weekday_display()} {obj.start_time:%H:%M}"

    @admin.display(description="hosts")
    def scope(self, obj):
        return f"tag {obj.host_tag}" if obj.host_tag else "all hosts"

    @admin.display(description="current or next opening")
    def next_open(self, obj):
        opening = windows.next_opening(obj, timezone.now())
        if opening is None:
            return "none soon"
        state = "open now" if opening.is_open(timezone.now()) else "next"
        return f"{state}: {opening.label}"

    # The backup_sources many-to-many goes to save_window with the rest of the form
    # (AuditedConfigAdmin.save_related saves no many-to-many itself).
    def config_create(self, request, fields):
        fields = dict(fields)
        sources = list(fields.pop("backup_sources", None) or [])
        return windows.save_window(None, by=request.user, backup_sources=sources, **fields)

    def config_update(self, request, obj, changes):
        changes = dict(changes)
        sources = changes.pop("backup_sources", None)  # absent: unchanged
        return windows.save_window(
            obj,
            by=request.user,
            backup_sources=None if sources is None else list(sources),
            **changes,
        )

    def config_delete(self, request, obj):
        windows.delete_window(obj, by=request.user)


@admin.register(ChangeFreeze)
class ChangeFreezeAdmin(_AdminOnly):
    list_display = ("reason", "starts_at", "ends_at", "state", "created_by")
    fields = ("reason", "starts_at", "ends_at")

    @admin.display(description="state")
    def state(self, obj):
        now = timezone.now()
        if obj.starts_at <= now < obj.ends_at:
            return "ON: only emergencies run"
        return "ended" if obj.ends_at <= now else "planned"

    def config_create(self, request, fields):
        return windows.save_freeze(None, by=request.user, **fields)

    def config_update(self, request, obj, changes):
        return windows.save_freeze(obj, by=request.user, **changes)

    def config_delete(self, request, obj):
        windows.delete_freeze(obj, by=request.user)


@admin.register(WindowOpening)
class WindowOpeningAdmin(ReadOnlyAdmin):
    list_display = ("window", "opens_at", "closes_at", "created")
