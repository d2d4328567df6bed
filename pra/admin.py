"""Remediation admin: the main UI for proposing, approving and following actions."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from portal import approvals
from portal.admin_approvals import ApprovalAdminMixin
from portal.admin_base import ReadOnlyAdmin
from portal.models import AuditEvent
from pra import actions
from pra.catalog import CATALOG
from pra.choices import ActionStatus
from pra.diagnostics import DIAGNOSTICS
from pra.models import DiagnosticRun, Host, PRAAction, PreflightStatus

BADGE = {
    ActionStatus.PROPOSED: "warn",
    ActionStatus.APPROVED: "warn",
    ActionStatus.EXECUTING: "warn",
    ActionStatus.COMPLETED: "ok",
    ActionStatus.FAILED: "bad",
    ActionStatus.REJECTED: "bad",
    ActionStatus.EXPIRED: "",
    ActionStatus.VOIDED: "bad",
}


def _badge(text: str, kind: str):
    return format_html('<span class="pra-badge {}" data-status="{}">{}</span>', kind, text, text)


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "address",
        "port",
        "ssh_user",
        "host_key_fingerprint",
        "tags",
        "enabled",
    )
    list_filter = ("enabled",)
    search_fields = ("name", "address", "tags")
    # The key is pinned by `manage.py pra_host add` after showing its fingerprint.
    readonly_fields = ("host_key", "host_key_fingerprint", "created")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("portal.manage_portal")

    def has_delete_permission(self, request, obj=None):
        return False

    change_form_template = "admin/pra/host/change_form.html"

    def save_model(self, request, obj, form, change):
        # One audited write path: an edit of what approvals name voids them (update_host).
        changes = {f: form.cleaned_data[f] for f in form.changed_data if f in actions.HOST_EDITABLE}
        approved = list(
            PRAAction.objects.filter(host_id=obj.pk, status=ActionStatus.APPROVED).values_list(
                "pk", flat=True
            )
        )
        try:
            actions.update_host(obj.pk, by=request.user, **changes)
        except actions.ActionError as exc:
            messages.error(request, f"Not saved: {exc.message}")
        obj.refresh_from_db()
        voided = PRAAction.objects.filter(pk__in=approved, status=ActionStatus.VOIDED).count()
        if voided:
            messages.warning(
                request,
                f"{voided} approved action(s) on this host were voided by this change: they "
                "will not run and must be proposed again.",
            )

    def log_change(self, request, obj, message):
        return None  # the audit log has HOST_UPDATED / HOST_KEY_PINNED

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/diagnose/", wrap(self.diagnose_view), name="pra_host_diagnose"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {
            "diagnostics": DIAGNOSTICS.values(),
            "can_diagnose": request.user.has_perm(actions.DIAGNOSE_PERMISSION),
            "recent_runs": DiagnosticRun.objects.filter(host_id=object_id)[:10],
        }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def diagnose_view(self, request, pk):
        return require_POST(self._diagnose)(request, pk)

    def _diagnose(self, request, pk):
        host = get_object_or_404(Host, pk=pk)
        form = DiagnosticForm(request.POST)
        if not form.is_valid():
            messages.error(request, f"Bad diagnostic request: {form.errors.as_text()}")
        else:
            try:
                run = actions.run_diagnostic(
                    host,
                    form.cleaned_data["name"],
                    form.cleaned_data["params"] or {},
                    by=request.user,
                )
            except actions.ActionError as exc:
                messages.error(request, exc.message)
            else:
                level = messages.SUCCESS if run.ok else messages.WARNING
                messages.add_message(
                    request, level, f"{run.command}: exit {run.exit_code} {run.error}"
                )
                return HttpResponseRedirect(
                    reverse("admin:pra_diagnosticrun_change", args=[run.pk])
                )
        return HttpResponseRedirect(reverse("admin:pra_host_change", args=[pk]))


class DiagnosticForm(forms.Form):
    name = forms.ChoiceField(choices=[(n, n) for n in DIAGNOSTICS])
    params = forms.JSONField(required=False, initial=dict)


class AwaitingMyApproval(admin.SimpleListFilter):
    title = "approval"
    parameter_name = "awaiting"

    def lookups(self, request, model_admin):
        return [("me", "Waiting for my approval")]

    def queryset(self, request, queryset):
        if self.value() != "me":
            return queryset
        signed = approvals.Approval.objects.filter(
            approver=request.user, content_type__model="praaction"
        ).values_list("object_id", flat=True)
        return queryset.filter(status=ActionStatus.PROPOSED).exclude(
            Q(proposed_by=request.user) | Q(pk__in=[int(i) for i in signed])
        )


class ProposeForm(forms.ModelForm):
    action = forms.ChoiceField(choices=[(n, f"{n} ({s.impact})") for n, s in CATALOG.items()])
    params = forms.JSONField(required=False, initial=dict, help_text='e.g. {"name": "web-1"}')
    auto_approve_requested = forms.BooleanField(
        required=False, label="Ask for automatic approval (LOW impact, if policy allows)"
    )

    class Meta:
        model = PRAAction
        fields = ["action", "host", "params", "rationale", "auto_approve_requested"]

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            actions.validate_proposal(
                action=data["action"],
                host=data["host"],
                params=data.get("params") or {},
                rationale=data.get("rationale", ""),
                auto_approve=data.get("auto_approve_requested", False),
            )
        except actions.ActionError as exc:
            raise forms.ValidationError(exc.message) from None
        return data


@admin.register(PRAAction)
class PRAActionAdmin(ApprovalAdminMixin, admin.ModelAdmin):
    list_display = ("id", "status_badge", "action", "impact", "host", "proposer", "age", "verified")
    list_filter = (AwaitingMyApproval, "status", "impact", "source", "host")
    search_fields = ("action", "host__name", "proposer_label", "rationale")
    list_select_related = ("host",)
    ordering = ("-created",)
    form = ProposeForm
    # The shared page, plus what windows, freezes and emergencies say about the action.
    change_form_template = "admin/pra/praaction/change_form_windows.html"
    sign_request = staticmethod(actions.approve_action)
    reject_request = staticmethod(actions.reject_action)
    waiting_status = ActionStatus.PROPOSED
    approved_message = "Approved: the action is queued for execution."

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return _badge(obj.status, BADGE.get(obj.status, ""))

    @admin.display(description="proposed by", ordering="proposer_label")
    def proposer(self, obj):
        if obj.source == "AI":
            return format_html("🤖 {} <em>(AI-proposed)</em>", obj.proposer_label)
        return obj.proposer_label

    @admin.display(description="age", ordering="created")
    def age(self, obj):
        seconds = int((timezone.now() - obj.created).total_seconds())
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"

    @admin.display(description="verification")
    def verified(self, obj):
        if obj.status in (ActionStatus.COMPLETED, ActionStatus.FAILED):
            return obj.get_verification_display()
        return "—"

    # Status and results are never edited by hand: existing actions are read-only.
    def has_change_permission(self, request, obj=None):
        return obj is None and request.user.has_perm("portal.propose_action")

    def has_add_permission(self, request):
        return request.user.has_perm("portal.propose_action")

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        proposal = actions.submit_proposal(
            action=form.cleaned_data["action"],
            host=form.cleaned_data["host"],
            params=form.cleaned_data.get("params") or {},
            rationale=form.cleaned_data["rationale"],
            by=request.user,
            auto_approve=form.cleaned_data.get("auto_approve_requested", False),
        )
        obj.pk = proposal.action.pk
        obj._joined_message = "" if proposal.created else proposal.message

    def response_add(self, request, obj, post_url_continue=None):
        if getattr(obj, "_joined_message", ""):
            # An identical action was already open: show that one, say so, add nothing.
            messages.warning(request, obj._joined_message)
            return HttpResponseRedirect(reverse("admin:pra_praaction_change", args=[obj.pk]))
        return super().response_add(request, obj, post_url_continue)

    def log_addition(self, request, obj, message):
        return None  # the audit log has PRA_PROPOSED

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/preflight/", wrap(require_POST(self._rerun_preflight)),
                 name="pra_praaction_preflight"),
            *self.approval_urls(),
            *super().get_urls(),
        ]  # fmt: skip

    def _rerun_preflight(self, request, pk):
        try:
            actions.rerun_preflight(pk, by=request.user)
        except actions.ActionError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, "Pre-flight started again.")
        return HttpResponseRedirect(reverse("admin:pra_praaction_change", args=[pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = get_object_or_404(PRAAction.objects.select_related("host"), pk=object_id)
        approval = self.approval_context(request, obj)
        blocked = obj.preflight_status == PreflightStatus.FAILED
        user = request.user
        context = {
            **approval,
            # A failed pre-flight blocks approval (approve_action refuses it anyway).
            "can_sign": approval["can_sign"] and not blocked,
            "preflight_blocks": blocked and obj.status == ActionStatus.PROPOSED,
            "can_rerun_preflight": obj.status == ActionStatus.PROPOSED
            and obj.preflight_status != PreflightStatus.PENDING
            and (
                user.has_perm(actions.PROPOSE_PERMISSION)
                or user.has_perm(approvals.APPROVE_PERMISSION)
            ),
            "action_obj": obj,
            "params_json": json.dumps(obj.params),
            "evidence": obj.evidence.all(),
            "trail": AuditEvent.objects.filter(
                subject_type="pra.praaction", subject_id=str(obj.pk)
            ).order_by("id"),
            "is_ai": obj.source == "AI",
            "status_kind": BADGE.get(obj.status, ""),
            "validity_minutes": approvals.rule_for(obj.impact).validity_seconds // 60,
        }
        return super().change_view(
            request, object_id, form_url, {**context, **(extra_context or {})}
        )


@admin.register(DiagnosticRun)
class DiagnosticRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "host", "command", "exit_code", "requested_by", "created", "action")
    list_filter = ("host",)


from pra import admin_windows  # noqa: E402, F401  (maintenance windows and freezes)
