import os
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any

from django import forms
from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern
from django.views.decorators.http import require_GET
from django_rq.admin import QueueAdmin
from django_rq.models import Dashboard
from rq.exceptions import NoSuchJobError

from portal import actions as portal_actions
from portal import admin_users as admin_users  # the User and Group admins
from portal import kinds, notify
from portal.admin_base import AuditedConfigAdmin, ReadOnlyAdmin
from portal.admin_display import duration_column, status_column, time_column
from portal.choices import AuditEventType, ChannelKind, NotificationKind, NotificationStatus
from portal.lib.pagination import EstimatedCountPaginator
from portal.models import (
    ApiToken,
    ApprovalRule,
    AuditEvent,
    EscalationLevel,
    Notification,
    NotificationChannel,
)
from portal.roles import PORTAL_APPS
from portal.tokens import revoke_token


def subject_types() -> list[str]:
    """What an audit event's subject can be: a model of the portal's apps, or a user or
    group (``portal.audit.subject_of`` stores the model's label)."""
    return sorted(
        model._meta.label_lower
        for model in apps.get_models()
        if model._meta.app_label in (*PORTAL_APPS, "auth")
    )


class SubjectTypeFilter(admin.SimpleListFilter):
    """The subject types from the models, not a ``SELECT DISTINCT`` over the whole log."""

    title = "subject type"
    parameter_name = "subject_type"

    def lookups(self, request, model_admin):
        return [(label, label) for label in subject_types()]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(subject_type=value) if value else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Read-only: the audit log is append-only, for everyone, admins included."""

    list_display = ("id", time_column("created"), "get_event_type_display", "actor",
                    "subject_type", "subject_id")  # fmt: skip
    list_filter = (kinds.list_filter(AuditEventType, "event_type", "event type"), SubjectTypeFilter)
    # Substring search on a big table: trigram indexes (portal migration 0016).
    search_fields = ("actor", "subject_id")
    # No date_hierarchy: it runs SELECT DISTINCT DATE_TRUNC(...) over every row per page.
    paginator = EstimatedCountPaginator
    list_per_page = 100
    show_full_result_count = False

    def get_readonly_fields(self, request, obj=None):
        # The label from the registry where the stored value would show.
        fields = super().get_readonly_fields(request, obj)
        return ["get_event_type_display" if f == "event_type" else f for f in fields]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created with `manage.py portal_token` (shown once); here they are revoked."""

    list_display = (
        "name", "user", "prefix", time_column("created"), time_column("last_used", "last used"),
        time_column("revoked_at", "revoked"),
    )  # fmt: skip
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
class ApprovalRuleAdmin(AuditedConfigAdmin):
    """Multi-signature rules per impact; HIGH can never be weakened below 2 + confirmation."""

    list_display = (
        "impact",
        "required_approvals",
        "require_confirmation",
        "allow_auto_approve",
        duration_column("validity_seconds", "valid for"),
        time_column("updated"),
    )

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("portal.manage_portal")

    def get_readonly_fields(self, request, obj=None):
        return ("impact",)  # one row per impact: the rule of HIGH never becomes LOW's

    def config_update(self, request, obj, changes):
        return portal_actions.update_approval_rule(obj.pk, by=request.user, **changes)


# --- Notifications --------------------------------------------------------------------

MANAGE_PORTAL = "portal.manage_portal"


class NotificationChannelForm(forms.ModelForm):
    url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        help_text=NotificationChannel._meta.get_field("url").help_text,
    )
    kinds = forms.MultipleChoiceField(
        # Called when a form is built: every app's kinds are registered by then.
        choices=lambda: [c for c in NotificationKind.choices if c[0] != NotificationKind.TEST],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every kind.",
    )

    class Meta:
        model = NotificationChannel
        fields = [
            "name",
            "kind",
            "url",
            "url_env",
            "recipients",
            "kinds",
            "min_severity",
            "enabled",
        ]


@admin.register(NotificationChannel)
class NotificationChannelAdmin(AuditedConfigAdmin):
    """Where notifications go. Secret URLs stay in the environment (url_env names them)."""

    form = NotificationChannelForm
    list_display = ("name", "kind", "target", "subscribed", "min_severity", "enabled", "ready")
    list_filter = ("kind", "enabled")
    search_fields = ("name",)
    actions = ["send_test_notification"]

    @admin.display(description="target")
    def target(self, obj):
        if obj.kind == ChannelKind.EMAIL:
            return ", ".join(obj.recipient_list)
        return f"${obj.url_env}" if obj.url_env else obj.url

    @admin.display(description="kinds")
    def subscribed(self, obj):
        return ", ".join(obj.kinds) if obj.kinds else "all"

    @admin.display(description="URL set", boolean=True)
    def ready(self, obj):
        if not obj.url_env:
            return True
        return bool(os.environ.get(obj.url_env) or os.environ.get(f"{obj.url_env}_FILE"))

    def has_add_permission(self, request):
        return request.user.has_perm(MANAGE_PORTAL)

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(MANAGE_PORTAL)

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm(MANAGE_PORTAL)

    def has_manage_permission(self, request):
        return request.user.has_perm(MANAGE_PORTAL)

    def config_create(self, request, fields):
        return portal_actions.create_channel(by=request.user, **fields)

    def config_update(self, request, obj, changes):
        return portal_actions.update_channel(obj.pk, by=request.user, **changes)

    def config_delete(self, request, obj):
        portal_actions.delete_channel(obj.pk, by=request.user)

    @admin.action(description="Send a test notification", permissions=["manage"])
    def send_test_notification(self, request, queryset):
        if not request.user.has_perm(MANAGE_PORTAL):
            raise PermissionDenied
        rows = [notify.send_test(channel, by=request.user) for channel in queryset]
        self.message_user(
            request,
            f"Queued {len(rows)} test notification(s); see Notifications for the outcome.",
        )


@admin.register(EscalationLevel)
class EscalationLevelAdmin(AuditedConfigAdmin):
    """Incident escalation levels (L1..L4) and the channels each one reaches."""

    list_display = ("level", "name", "delay_minutes", "channel_names")
    filter_horizontal = ("channels",)

    @admin.display(description="channels")
    def channel_names(self, obj):
        return ", ".join(c.name for c in obj.channels.all()) or "-"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("channels")

    def has_add_permission(self, request):
        return request.user.has_perm(MANAGE_PORTAL)

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(MANAGE_PORTAL)

    def has_delete_permission(self, request, obj=None):
        return False  # incidents refer to levels by number

    def config_create(self, request, fields):
        return portal_actions.create_escalation_level(by=request.user, **fields)

    def config_update(self, request, obj, changes):
        return portal_actions.update_escalation_level(obj.pk, by=request.user, **changes)


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    """Read-only record of every notification; FAILED ones can be retried."""

    list_display = (
        "id",
        time_column("created"),
        "get_kind_display",
        "severity",
        "channel",
        status_column(),
        "attempts",
        time_column("sent_at", "sent"),
        "subject_type",
        "subject_id",
        "short_error",
    )
    list_filter = (
        "status",
        kinds.list_filter(NotificationKind, "kind", "kind"),
        "severity",
        "channel",
    )
    search_fields = ("title", "subject_id")
    # No date_hierarchy: a SELECT DISTINCT DATE_TRUNC(...) over every row on each page.
    paginator = EstimatedCountPaginator
    list_select_related = ("channel",)
    list_per_page = 100
    show_full_result_count = False
    actions = ["retry"]

    @admin.display(description="last error")
    def short_error(self, obj):
        return obj.last_error[:80]

    def get_readonly_fields(self, request, obj=None):
        # The kind's label from the registry where the stored value would show.
        names = [f.name for f in self.model._meta.fields]
        return ["get_kind_display" if f == "kind" else f for f in names]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_manage_permission(self, request):
        return request.user.has_perm(MANAGE_PORTAL)

    @admin.action(description="Retry selected failed notifications", permissions=["manage"])
    def retry(self, request, queryset):
        if not request.user.has_perm(MANAGE_PORTAL):
            raise PermissionDenied
        failed = queryset.filter(status=NotificationStatus.FAILED).values_list("pk", flat=True)
        count = sum(notify.retry_notification(pk, by=request.user) for pk in failed)
        self.message_user(request, f"Re-queued {count} failed notification(s).")


# --- Job queues -----------------------------------------------------------------------
# django_rq's pages (dashboard, jobs with their arguments and tracebacks, empty/clear,
# delete/requeue/stop, registries, workers) only check is_staff, and every portal user is
# staff. They are for the admin role alone; everyone else gets the read-only summary below.


def is_portal_admin(user) -> bool:
    """The admin role (or a superuser): the only one allowed to manage the job queues."""
    return bool(user.is_active and user.is_staff and user.has_perm(MANAGE_PORTAL))


def admin_role_required(view):
    """Refuse (403) anyone but the admin role; meant inside ``admin_site.admin_view``,
    which sends anonymous users to the login page first."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not is_portal_admin(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapped


def _rq_page(view):
    """One of django_rq's pages: 404, not a crash, for an unknown queue, job or worker."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        index = kwargs.get("queue_index", kwargs.get("connection_index", 0))
        if not 0 <= index < len(settings.RQ_QUEUES):
            raise Http404("No such queue.")
        if "key" in kwargs:
            from django_rq.queues import get_queue_by_index
            from rq import Worker

            connection = get_queue_by_index(index).connection
            try:
                worker = Worker.find_by_key(kwargs["key"], connection=connection)
            except ValueError:  # not even shaped like a worker key
                worker = None
            if worker is None:
                raise Http404("No such worker.")
        try:
            return view(request, *args, **kwargs)
        except NoSuchJobError:
            raise Http404("No such job (it may have finished or been deleted).") from None

    return wrapped


class PortalQueueAdmin(QueueAdmin):
    """django_rq's dashboard, visible to and usable by the admin role only."""

    def has_module_permission(self, request):
        return is_portal_admin(request.user)

    def has_view_permission(self, request, obj=None):
        return is_portal_admin(request.user)

    def has_change_permission(self, request, obj=None):
        return is_portal_admin(request.user)

    def get_urls(self):
        # Every one of django_rq's URLs, including stats.json and metrics (which it leaves
        # open to any staff user or its own API token), goes through the login page and
        # the admin-role check. The model has no table: of the standard ModelAdmin pages
        # only the list (django_rq's dashboard) means anything, the others could only fail.
        # The schedulers page needs rq-scheduler, which the portal does not use (rq's own
        # scheduler and cron run its periodic work).
        site_view = self.admin_site.admin_view
        dropped = {f"django_rq_dashboard_{v}" for v in ("add", "change", "delete", "history")}
        dropped.add("django_rq_scheduler_jobs")
        return [
            URLPattern(
                p.pattern,
                site_view(admin_role_required(_rq_page(p.callback))),
                p.default_args,
                p.name,
            )
            for p in super().get_urls()
            if p.name and p.name not in dropped
        ]


if admin.site.is_registered(Dashboard):
    admin.site.unregister(Dashboard)
admin.site.register(Dashboard, PortalQueueAdmin)


def queue_rows() -> list[dict]:
    """Per queue of settings.RQ_QUEUES: depth, live workers, running, scheduled and failed
    counts. Counts only: never job arguments, results or tracebacks."""
    import django_rq
    from rq import Worker
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    fresh_after = datetime.now(UTC) - timedelta(seconds=settings.WORKER_HEARTBEAT_MAX_AGE)
    rows = []
    for name in settings.RQ_QUEUES:
        row: dict[str, Any] = {"name": name, "error": ""}
        try:
            queue = django_rq.get_queue(name)
            workers = Worker.all(queue=queue)
            row.update(
                depth=queue.count,
                workers=sum(
                    1 for w in workers if w.last_heartbeat and w.last_heartbeat >= fresh_after
                ),
                started=StartedJobRegistry(queue=queue).count,
                scheduled=ScheduledJobRegistry(queue=queue).count,
                failed=FailedJobRegistry(queue=queue).count,
            )
        except Exception as exc:  # Redis down: say so on the page, never a traceback
            row["error"] = f"unavailable ({exc.__class__.__name__})"
        rows.append(row)
    return rows


@require_GET
def queue_status_view(request: HttpRequest) -> TemplateResponse:
    """``/admin/queues/``: read-only queue depths for every role that may view the portal."""
    if not request.user.has_perm("portal.view_portal"):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Job queues",
        "rows": queue_rows(),
        "can_manage_queues": is_portal_admin(request.user),
    }
    return TemplateResponse(request, "admin/queue_status.html", context)
