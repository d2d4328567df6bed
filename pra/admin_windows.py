"""Admin pages of maintenance windows and change freezes (administrators edit, everyone
with the portal's view role reads). Every save and delete goes through ``pra.windows``
(validated, one audit event per change); the admin's own change log is not used."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone

from portal.admin_base import ReadOnlyAdmin
from pra import windows
from pra.models import ChangeFreeze, MaintenanceWindow, WindowOpening


class _AdminOnly(admin.ModelAdmin):
    actions = None  # no bulk delete: each delete is one audited change

    def has_add_permission(self, request):
        return request.user.has_perm(windows.MANAGE_PERMISSION)

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(windows.MANAGE_PERMISSION)

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm(windows.MANAGE_PERMISSION)

    def log_addition(self, request, obj, message):
        return None  # the audit log has the event

    def log_change(self, request, obj, message):
        return None

    def log_deletion(self, request, obj, object_repr):
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

    def save_model(self, request, obj, form, change):
        fields = {f: form.cleaned_data[f] for f in windows.WINDOW_FIELDS if f in form.cleaned_data}
        try:
            saved = windows.save_window(
                obj if change else None,
                by=request.user,
                backup_sources=list(form.cleaned_data.get("backup_sources") or []),
                **fields,
            )
        except windows.WindowError as exc:
            messages.error(request, f"Not saved: {exc.message}")
            return
        obj.pk = saved.pk

    def save_related(self, request, form, formsets, change):
        return None  # save_window set the backup sources in its own transaction

    def delete_model(self, request, obj):
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

    def save_model(self, request, obj, form, change):
        fields = {f: form.cleaned_data[f] for f in windows.FREEZE_FIELDS}
        try:
            saved = windows.save_freeze(obj if change else None, by=request.user, **fields)
        except windows.WindowError as exc:
            messages.error(request, f"Not saved: {exc.message}")
            return
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        windows.delete_freeze(obj, by=request.user)


@admin.register(WindowOpening)
class WindowOpeningAdmin(ReadOnlyAdmin):
    list_display = ("window", "opens_at", "closes_at", "created")
