"""Backups admin: sources, runs (run now, verify now), restore targets, the guarded restore page."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Subquery
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from backups import actions, restore_targets
from backups.choices import ArtifactFormat, RestoreStatus, RunStatus, Verification
from backups.models import (
    BackupArtifact,
    BackupDrill,
    BackupRun,
    BackupSource,
    RestoreRequest,
    RestoreTarget,
)
from portal.admin_approvals import ApprovalAdminMixin
from portal.admin_base import AuditedConfigAdmin, readable
from portal.admin_display import badge, bytes_column, duration_column, time_column
from portal.lib.pagination import EstimatedCountPaginator
from portal.models import AuditEvent
from portal.templatetags.portal_format import ago, human_duration

BADGE = {
    RunStatus.SUCCEEDED: "ok",
    RunStatus.FAILED: "bad",
    RestoreStatus.REJECTED: "bad",
    RestoreStatus.EXPIRED: "",
    Verification.VERIFIED: "ok",
    "SHRANK": "bad",
}
MANAGE = "portal.manage_portal"


def _badge(text: str):
    return badge(text, kind=BADGE.get(text, "warn"))


VERIFICATION_WORDS: dict[str, tuple[str, str]] = {
    Verification.PENDING: ("not run", ""),
    Verification.VERIFIED: ("passed", "ok"),
    Verification.FAILED: ("failed", "bad"),
}


def verification_badge(value: str) -> SafeString:
    """A backup's verification as not run / passed / failed."""
    words, kind = VERIFICATION_WORDS.get(value, (value, "warn"))
    return badge(value, kind=kind, label=words)


_UNREAD = object()


class BackupSourceChangeList(ChangeList):
    """Reads the newest succeeded backup of every source on the page in two queries, for
    the "last backup" column (it was one query per source)."""

    def get_results(self, request):
        super().get_results(request)
        sources = list(self.result_list)
        newest = (
            BackupRun.objects.stored()
            .filter(source=OuterRef("pk"), restore__isnull=True)
            .order_by("-created")
        )
        ids = dict(
            BackupSource.objects.filter(pk__in=[s.pk for s in sources])
            .annotate(run_id=Subquery(newest.values("pk")[:1]))
            .values_list("pk", "run_id")
        )
        runs = BackupRun.objects.in_bulk([pk for pk in ids.values() if pk])
        for source in sources:
            source.newest_succeeded = runs.get(ids.get(source.pk))
        self.result_list = sources


@admin.register(BackupSource)
class BackupSourceAdmin(AuditedConfigAdmin):
    list_display = ("name", "kind", "transport", "cron", "enabled", "retention", "last_backup")
    list_filter = ("kind", "enabled")
    search_fields = ("name", "dsn")
    actions = ["run_now", "drill_now"]
    fieldsets = (
        (None, {"fields": ("name", "kind", "enabled", "schedule", "transport", "stall_timeout")}),
        (
            "PostgreSQL / Redis / Terraform state",
            {"fields": ("dsn", "pg_mode", "databases", "pg_role_passwords")},
        ),
        (
            "Credentials (names only, never the secret)",
            {"fields": ("password_env", "password_file")},
        ),
        (
            "Kubernetes",
            {
                "fields": (
                    "kubeconfig",
                    "kube_context",
                    "kube_kinds",
                    "kube_namespaces",
                    "kube_namespace",
                    "kube_pod",
                    "kube_container",
                )
            },
        ),  # fmt: skip
        ("Retention", {"fields": ("retention_days", "keep_weekly", "keep_monthly")}),
        ("Restore drills", {"fields": ("drill_target", "drill_schedule", "rto_target_seconds")}),
    )

    def has_add_permission(self, request):
        return request.user.has_perm(MANAGE)

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(MANAGE) or (
            obj is None and request.user.has_perm(actions.RUN_PERMISSION)
        )

    def has_delete_permission(self, request, obj=None):
        return False

    def config_create(self, request, fields):
        return actions.create_source(by=request.user, **fields)

    def config_update(self, request, obj, changes):
        return actions.update_source(obj.pk, by=request.user, **changes)

    def get_changelist(self, request, **kwargs):
        return BackupSourceChangeList

    def get_urls(self):
        from backups.dr_admin import dr_report_view

        wrap = self.admin_site.admin_view
        view = wrap(lambda request: dr_report_view(request, self.admin_site, self.model._meta))
        return [path("dr-report/", view, name="backups_backupsource_dr_report"),
                *super().get_urls()]  # fmt: skip

    @admin.display(description="last backup")
    def last_backup(self, obj):
        run = getattr(obj, "newest_succeeded", _UNREAD)
        if run is _UNREAD:  # not from the changelist (which reads them for the whole page)
            run = BackupRun.objects.of_source(obj).stored().first()
        if run is None:
            return "never"
        if run.awaiting_acceptance:
            return format_html("{} · {}", ago(run.created), _badge("SHRANK"))
        return format_html("{} · {}", ago(run.created), verification_badge(run.verification))

    @admin.action(description="Run a backup now")
    def run_now(self, request, queryset):
        if not request.user.has_perm(actions.RUN_PERMISSION):
            raise PermissionDenied
        for source in queryset:
            try:
                run = actions.request_run(source, by=request.user)
            except actions.BackupError as exc:
                messages.error(request, exc.message)
            else:
                messages.success(request, f"Backup #{run.pk} of {source.name} queued.")

    @admin.action(description="Run a restore drill now")
    def drill_now(self, request, queryset):
        if not request.user.has_perm(actions.RUN_PERMISSION):
            raise PermissionDenied
        for source in queryset:
            try:
                drill = actions.request_drill(source, by=request.user)
            except actions.BackupError as exc:
                messages.error(request, exc.message)
            else:
                messages.success(request, f"Drill #{drill.pk} of {source.name} queued.")


@admin.register(BackupDrill)
class BackupDrillAdmin(admin.ModelAdmin):
    """Restore drills: read-only (they run on a schedule, or from "Run a restore drill now")."""

    list_display = ("id", "source", "trigger", "status_badge", time_column("created"), "run",
                    "target", "rto", "met_target")  # fmt: skip
    list_filter = ("status", "met_target", "source")
    list_select_related = ("source", "target", "run__source")  # str(run) names its source
    readonly_fields = [readable(f) for f in BackupDrill._meta.fields]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return _badge(obj.status)

    @admin.display(description="restore time (target)", ordering="rto_seconds")
    def rto(self, obj):
        if obj.rto_seconds is None:
            return "—"
        text = f"{human_duration(obj.rto_seconds)} ({human_duration(obj.rto_target_seconds)})"
        if obj.met_target is False:
            return badge("OVER", kind="bad", label=text)
        return text

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ArtifactInline(admin.TabularInline):
    model = BackupArtifact
    extra = 0
    can_delete = False
    fields = ("component", "format", "raw", "stored", "sha256", "verified", "verify_detail",
              "restore_link")  # fmt: skip
    readonly_fields = fields

    @admin.display(description="size")
    def raw(self, obj):
        return bytes_column("bytes_raw")(obj)

    @admin.display(description="stored")
    def stored(self, obj):
        return bytes_column("bytes_stored")(obj)

    @admin.display(description="verification")
    def verified(self, obj):
        return verification_badge(obj.verification)

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="restore")
    def restore_link(self, obj):
        if obj.format == ArtifactFormat.PG_GLOBALS:
            return "with each database"
        if not obj.restorable:
            return "—"
        url = reverse("admin:backups_restorerequest_plan") + f"?artifact={obj.pk}"
        return format_html('<a href="{}">plan a restore…</a>', url)


class AcceptForm(forms.Form):
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text="why this much smaller backup is right (e.g. the old audit table was dropped)",
    )


@admin.register(BackupRun)
class BackupRunAdmin(admin.ModelAdmin):
    list_display = (
        "id", "source", "trigger", "status_badge", "failure_cause", time_column("created"),
        duration_column("duration_s", "took"), bytes_column("bytes_stored", "stored"),
        "verified", "size_check", "copy_state", time_column("deleted_at", "deleted"),
    )  # fmt: skip
    list_filter = ("status", "failure_cause", "verification", "trigger", "shrink_flag", "source")
    list_select_related = ("source",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    readonly_fields = [readable(f) for f in BackupRun._meta.fields]
    inlines = [ArtifactInline]
    actions = ["verify_now", "accept_small"]

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:run_id>/accept/", wrap(self.accept_view), name="backups_backuprun_accept"),
            *super().get_urls(),
        ]

    @admin.display(description="size check", ordering="shrink_flag")
    def size_check(self, obj):
        if obj.awaiting_acceptance:
            url = reverse("admin:backups_backuprun_accept", args=[obj.pk])
            return format_html(
                '<span class="pra-badge bad">SHRANK</span> not counted · <a href="{}">accept…</a>',
                url,
            )
        if obj.shrink_flag and obj.accepted_at:
            return format_html("shrank · accepted by {}", obj.accepted_by)
        return "—"

    @admin.action(description="Accept a suspiciously small backup…")
    def accept_small(self, request, queryset):
        waiting = [run for run in queryset if run.awaiting_acceptance]
        if len(waiting) != 1:
            messages.error(
                request, "Select exactly one backup awaiting acceptance (size check: SHRANK)."
            )
            return None
        return HttpResponseRedirect(reverse("admin:backups_backuprun_accept", args=[waiting[0].pk]))

    def accept_view(self, request, run_id: int):
        if not any(request.user.has_perm(p) for p in actions.ACCEPT_PERMISSIONS):
            raise PermissionDenied
        run = get_object_or_404(BackupRun.objects.select_related("source"), pk=run_id)
        form = AcceptForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                run = actions.accept_backup(
                    run, by=request.user, reason=form.cleaned_data["reason"]
                )
            except actions.BackupError as exc:
                messages.error(request, exc.message)
            else:
                messages.success(request, f"Backup #{run.pk} accepted: it counts as a good backup.")
                return HttpResponseRedirect(
                    reverse("admin:backups_backuprun_change", args=[run.pk])
                )
        previous = actions.previous_good(run)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Accept the suspiciously small backup #{run.pk}?",
            "run": run,
            "previous": previous,
            "percent": round(100 * run.bytes_raw / previous.bytes_raw)
            if previous and previous.bytes_raw
            else None,
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/backups/backuprun/accept.html", context)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return _badge(obj.status)

    @admin.display(description="verification", ordering="verification")
    def verified(self, obj):
        return verification_badge(obj.verification)

    @admin.display(description="second copy")
    def copy_state(self, obj):
        if obj.copy_error:
            return format_html(
                '<span class="pra-badge bad" title="{}">copy failed</span>', obj.copy_error[:300]
            )
        if obj.copied_at:
            return badge("COPIED", kind="ok", label="copied")
        return "—"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and request.user.has_perm(actions.RUN_PERMISSION)

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Verify again now")
    def verify_now(self, request, queryset):
        if not request.user.has_perm(actions.RUN_PERMISSION):
            raise PermissionDenied
        for run in queryset:
            try:
                result = actions.request_verification(run, by=request.user)
            except actions.BackupError as exc:
                messages.error(request, exc.message)
            else:
                (messages.success if result.queued else messages.info)(request, result.message)


@admin.register(RestoreTarget)
class RestoreTargetAdmin(AuditedConfigAdmin):
    """Registered restore targets: administrators only, every change through the audited
    actions in ``backups.restore_targets``."""

    list_display = ("name", "kind", "where", "credential", "enabled", "drills", "revision",
                    time_column("updated"))  # fmt: skip
    list_filter = ("kind", "enabled")
    search_fields = ("name", "host", "description")
    readonly_fields = ("revision", "created", "updated", "created_by")
    fieldsets = (
        (None, {"fields": ("name", "kind", "enabled", "description")}),
        ("PostgreSQL / Redis", {"fields": ("host", "port", "username", "database")}),
        (
            "Credentials (names only, never the secret)",
            {"fields": ("password_env", "password_file")},
        ),
        ("Kubernetes", {"fields": ("kubeconfig", "kube_context")}),
        ("Restore drills", {"fields": ("drills",)}),
        ("History", {"fields": ("revision", "created", "updated", "created_by")}),
    )

    def has_add_permission(self, request):
        return request.user.has_perm(restore_targets.MANAGE_PERMISSION)

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(restore_targets.MANAGE_PERMISSION)

    def has_delete_permission(self, request, obj=None):
        return False  # disable instead: past restores keep pointing at it

    @admin.display(description="credential")
    def credential(self, obj):
        if obj.password_env:
            return f"env {obj.password_env}"
        if obj.password_file:
            return f"file {obj.password_file}"
        return "kubeconfig" if obj.kind == "kubernetes" else "none"

    def config_create(self, request, fields):
        return restore_targets.create_restore_target(by=request.user, **fields)

    def config_update(self, request, obj, changes):
        return restore_targets.update_restore_target(obj.pk, by=request.user, **changes)


def _target_choices():
    choices = [("", "— the backup's own source —")]
    choices += [
        (t.name, str(t)) for t in RestoreTarget.objects.filter(enabled=True).order_by("name")
    ]
    return choices


#: How many artifacts the plan page's list offers.
ARTIFACT_CHOICES = 100


class PlanForm(forms.Form):
    """The plan page's input. The target is only ever a *name*: ``backups.restore`` checks it
    (the same validation as ``backup_restore plan``), nothing here connects anywhere."""

    artifact = forms.ModelChoiceField(
        queryset=BackupArtifact.objects.restorable().select_related("run__source"),
        help_text=f"the {ARTIFACT_CHOICES} newest usable artifacts; an older one: open its "
        "backup run and press Restore",
    )
    target = forms.CharField(
        required=False,
        max_length=300,
        widget=forms.Select(choices=()),
        help_text="a registered restore target (administrators add them), or the source itself",
    )
    database = forms.CharField(
        required=False,
        max_length=100,
        help_text="PostgreSQL: the database to restore into (blank: the backed-up one), e.g. "
        "shop_scratch for a drill",
    )
    resources = forms.CharField(
        required=False,
        max_length=2000,
        help_text="Kubernetes: comma-separated KIND, KIND/NAMESPACE or KIND/NAMESPACE/NAME",
    )
    confirmation = forms.CharField(
        required=False, help_text="overwriting: type the target's name (shown in the preview)"
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["target"].widget.choices = _target_choices()
        # A year of nightly runs is thousands of artifacts: the list shows the newest (and
        # the one asked for); any usable artifact is still accepted by its id.
        field = self.fields["artifact"]
        asked = self.data.get("artifact") or self.initial.get("artifact")
        shown = list(field.queryset.order_by("-pk")[:ARTIFACT_CHOICES])
        if asked and str(asked).isdigit() and all(str(a.pk) != str(asked) for a in shown):
            shown += list(field.queryset.filter(pk=int(asked)))
        field.widget.choices = [("", "---------"), *((a.pk, str(a)) for a in shown)]

    def spec(self) -> dict:
        data = self.cleaned_data
        spec: dict = {}
        if data["target"]:
            spec["target"] = data["target"]
        if data["database"]:
            spec["database"] = data["database"].strip()
        resources = [r.strip() for r in data["resources"].split(",") if r.strip()]
        if resources:
            spec["resources"] = resources
        return spec


@admin.register(RestoreRequest)
class RestoreRequestAdmin(ApprovalAdminMixin, admin.ModelAdmin):
    list_display = ("id", "status_badge", "mode", "artifact", "target_name", "requester_label",
                    time_column("created"))  # fmt: skip
    list_filter = ("status", "mode", "restore_target")
    change_form_template = "admin/backups/restorerequest/change_form.html"
    sign_request = staticmethod(actions.approve_restore)
    reject_request = staticmethod(actions.reject_restore)
    waiting_status = RestoreStatus.PLANNED
    approved_message = "Approved: the restore is queued."
    change_list_template = "admin/backups/restorerequest/change_list.html"

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return _badge(obj.status)

    def has_add_permission(self, request):
        return False  # restores are planned on the plan page (preview first)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("plan/", wrap(self.plan_view), name="backups_restorerequest_plan"),
            *self.approval_urls(),
            *super().get_urls(),
        ]

    def plan_view(self, request):
        if not request.user.has_perm(actions.PLAN_PERMISSION):
            raise PermissionDenied
        plan = None
        if request.method == "POST":
            form = PlanForm(request.POST)
            if form.is_valid():
                data = form.cleaned_data
                create = "create" in request.POST
                try:
                    req, plan = actions.plan_restore(
                        data["artifact"],
                        target=form.spec(),
                        by=request.user,
                        confirmation=data["confirmation"],
                        dry_run=not create,
                    )
                except actions.BackupError as exc:
                    messages.error(request, exc.message)
                else:
                    if req is not None:
                        messages.success(request, f"Restore #{req.pk} planned ({req.status}).")
                        return HttpResponseRedirect(
                            reverse("admin:backups_restorerequest_change", args=[req.pk])
                        )
        else:
            form = PlanForm(initial={"artifact": request.GET.get("artifact")})
        context = {
            **self.admin_site.each_context(request),
            "title": "Plan a restore",
            "form": form,
            "plan": plan,
            "plan_json": json.dumps(plan, indent=2, default=str) if plan else "",
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/backups/restorerequest/plan.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = get_object_or_404(RestoreRequest.objects.select_related("artifact__run__source"),
                                pk=object_id)  # fmt: skip
        context = {
            **self.approval_context(request, obj),
            "approve_label": "Approve the overwrite",
            "restore": obj,
            "plan_json": json.dumps(obj.plan, indent=2, default=str),
            "report_json": json.dumps(obj.report, indent=2, default=str) if obj.report else "",
            "trail": AuditEvent.objects.filter(
                subject_type="backups.restorerequest", subject_id=str(obj.pk)
            ).order_by("id"),
            "status_kind": BADGE.get(obj.status, "warn"),
        }
        return super().change_view(
            request, object_id, form_url, {**context, **(extra_context or {})}
        )
