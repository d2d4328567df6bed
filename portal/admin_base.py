"""Admin base classes shared by the apps."""

from django.contrib import admin
from django.db import models

from portal import admin_display


def readable(field: models.Field):
    """A read-only detail-page cell for ``field``: a badge for a state, "3 min ago" (exact
    time on hover) for a moment, "2 min 0 s" for a duration, "27.5 KB" for a size; the
    field's own name otherwise (Django's rendering)."""
    label = str(field.verbose_name)
    if isinstance(field, models.DateTimeField):
        return admin_display.time_column(field.name, label)
    if isinstance(field, models.DurationField):
        return admin_display.duration_column(field.name, label)
    if field.name == "status" and field.choices:
        return admin_display.status_column(field.name, label)
    if field.name == "severity" and field.choices:
        return admin_display.severity_column(field.name)
    if field.name.startswith("bytes") or field.name.endswith("_bytes"):
        return admin_display.bytes_column(field.name, label)
    return field.name


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records that only the actions layer writes: visible to viewers, editable by nobody."""

    def get_readonly_fields(self, request, obj=None):
        return [readable(f) for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
