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


class _Refused(Exception):
    """An action refused an admin write: the page's transaction rolls back, the form shows why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AuditedConfigAdmin(admin.ModelAdmin):
    """Configuration edited in the admin, every write through the app's audited action.

    Subclasses implement ``config_update`` (and ``config_create`` / ``config_delete``
    where adding or deleting is allowed), each calling one action; every field of the
    form goes to it (an action refuses a field it does not take, loudly). Form edits,
    list editing (``list_editable``), many-to-many fields and deletes (one, or "delete
    selected") all end up there; Django's own ``save`` of the row is never called. A
    refusal (``RequestRefused``) rolls the whole page back and is shown on the page it
    came from, never as a traceback.
    """

    def config_create(self, request, fields: dict):
        raise NotImplementedError

    def config_update(self, request, obj, changes: dict):
        raise NotImplementedError

    def config_delete(self, request, obj) -> None:
        raise NotImplementedError

    def _call(self, func, *args, **kwargs):
        from portal.errors import RequestRefused

        try:
            return func(*args, **kwargs)
        except RequestRefused as exc:
            raise _Refused(exc.message) from None

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            changes = {f: data[f] for f in form.changed_data if f in data}
            saved = self._call(self.config_update, request, obj, changes)
        else:
            fields = {f: data[f] for f in form.fields if f in data}
            saved = self._call(self.config_create, request, fields)
        obj.pk = saved.pk
        obj._state.adding = False
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        # The form's many-to-many fields went to the action with the rest of the form.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_model(self, request, obj):
        self._call(self.config_delete, request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

    def _refused_page(self, request, exc: _Refused):
        from django.contrib import messages
        from django.http import HttpResponseRedirect

        messages.error(request, f"Not saved: {exc.message}")
        return HttpResponseRedirect(request.get_full_path())

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except _Refused as exc:
            return self._refused_page(request, exc)

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except _Refused as exc:
            return self._refused_page(request, exc)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except _Refused as exc:
            return self._refused_page(request, exc)
