"""Remediation admin: the main UI for proposing, approving and following actions."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.contenttypes.models import ContentType
from django.db.models import CharField, Exists, OuterRef, Q
from django.db.models.functions import Cast
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import smart_split, unescape_string_literal
from django.views.decorators.http import require_POST

from portal import approvals
from portal.admin_approvals import ApprovalAdminMixin
from portal.admin_base import AuditedConfigAdmin, ReadOnlyAdmin
from portal.admin_display import badge, time_column
from portal.lib.pagination import EstimatedCountPaginator
from portal.models import AuditEvent
from portal.templatetags.portal_format import human_duration
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


VERIFICATION = {
    # (words, badge colour) of an action's post-check
    "PENDING": ("not run", ""),
    "VERIFIED": ("passed", "ok"),
    "NOT_VERIFIED": ("failed", "bad"),
    "SKIPPED": ("no probe", ""),
}


def verification_state(action) -> tuple[str, str]:
    """(words, badge colour): not run / passed / failed (/ no probe). An action that did
    not run has not been verified, whatever the field says."""
    if action.status not in (ActionStatus.COMPLETED, ActionStatus.FAILED):
        return "not run", ""
    return VERIFICATION.get(action.verification, (action.verification, ""))


def verification_badge(action: PRAAction) -> SafeString:
    words, kind = verification_state(action)
    return badge(
        action.verification, kind=kind, label=words, title=action.get_verification_display()
    )


def _badge(text: str, kind: str):
    return format_html('<span class="pra-badge {}" data-status="{}">{}</span>', kind, text, text)


@admin.register(Host)
class HostAdmin(AuditedConfigAdmin):
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

    def config_update(self, request, obj, changes):
        # update_host voids approvals an edit of what they name no longer covers.
        approved = list(
            PRAAction.objects.filter(host_id=obj.pk, status=ActionStatus.APPROVED).values_list(
                "pk", flat=True
            )
        )
        host = actions.update_host(obj.pk, by=request.user, **changes)
        voided = PRAAction.objects.filter(pk__in=approved, status=ActionStatus.VOIDED).count()
        if voided:
            messages.warning(
                request,
                f"{voided} approved action(s) on this host were voided by this change: they "
                "will not run and must be proposed again.",
            )
        return host

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


def _search_words(term: str) -> list[str]:
    """The admin's own split of a search term: words, or "quoted phrases"."""
    words = []
    for bit in smart_split(term):
        if bit.startswith(('"', "'")) and bit[0] == bit[-1] and len(bit) > 1:
            bit = unescape_string_literal(bit)
        if bit:
            words.append(bit)
    return words


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
        # A correlated NOT EXISTS on the approvals index, not the ids of every request the
        # person ever signed in an IN list (26,000 after a year: ~180 KB of SQL per query).
        signed = approvals.Approval.objects.filter(
            approver=request.user,
            content_type=ContentType.objects.get_for_model(PRAAction),
            object_id=Cast(OuterRef("pk"), output_field=CharField()),
        )
        return (
            queryset.filter(status=ActionStatus.PROPOSED)
            .exclude(proposed_by=request.user)
            .filter(~Exists(signed))
        )


class ProposeForm(forms.ModelForm):
    action = forms.ChoiceField(choices=[(n, f"{n} ({s.impact})") for n, s in CATALOG.items()])
    params = forms.JSONField(required=False, initial=dict, help_text='e.g. {"name": "web-1"}')
    auto_approve_requested = forms.BooleanField(
        required=False, label="Ask for automatic approval (LOW impact, if policy allows)"
    )
    emergency = forms.BooleanField(
        required=False,
        label="Emergency",
        help_text="Runs during a change freeze and outside maintenance windows. Needs a typed "
        "reason below and one more signature than the action's impact usually needs.",
    )
    emergency_reason = forms.CharField(
        required=False,
        label="Emergency reason",
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Only for an emergency: why it cannot wait for the next maintenance window "
        "or the end of the freeze. It needs one more signature.",
    )

    class Meta:
        model = PRAAction
        fields = ["action", "host", "params", "rationale", "auto_approve_requested",
                  "emergency", "emergency_reason"]  # fmt: skip

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        auto_approve = data.get("auto_approve_requested", False)
        try:
            actions.validate_proposal(
                action=data["action"],
                host=data["host"],
                params=data.get("params") or {},
                rationale=data.get("rationale", ""),
                auto_approve=auto_approve,
            )
            # The same check submit_proposal makes, so a bad reason is a form error.
            data["emergency_reason"] = actions.validate_emergency(
                data.get("emergency", False), data.get("emergency_reason", ""), auto_approve
            )
        except actions.ActionError as exc:
            if exc.code == "emergency_reason":
                self.add_error("emergency_reason", exc.message)
                return data
            raise forms.ValidationError(exc.message) from None
        return data


@admin.register(PRAAction)
class PRAActionAdmin(ApprovalAdminMixin, admin.ModelAdmin):
    list_display = ("id", "status_badge", "action", "impact_badge", "host", "proposer", "age",
                    "verified", "took")  # fmt: skip
    list_filter = (AwaitingMyApproval, "status", "impact", "source", "host")
    search_fields = ("action", "host__name", "proposer_label", "rationale")
    list_select_related = ("host",)
    ordering = ("-created",)
    paginator = EstimatedCountPaginator  # a year is 100,000 actions: no COUNT(*) per page
    show_full_result_count = False
    form = ProposeForm
    # The shared page, plus what windows, freezes and emergencies say about the action.
    change_form_template = "admin/pra/praaction/change_form_windows.html"
    sign_request = staticmethod(actions.approve_action)
    reject_request = staticmethod(actions.reject_action)
    waiting_status = ActionStatus.PROPOSED
    approved_message = "Approved: the action is queued for execution."

    def get_search_results(self, request, queryset, search_term):
        """``search_fields``' meaning (every word in one of them), without the join: host
        names are few, so they are matched first and the actions filtered by host id,
        which keeps the search on this table and its trigram indexes."""
        for word in _search_words(search_term):
            hosts = list(Host.objects.filter(name__icontains=word).values_list("pk", flat=True))
            queryset = queryset.filter(
                Q(action__icontains=word)
                | Q(proposer_label__icontains=word)
                | Q(rationale__icontains=word)
                | Q(host_id__in=hosts)
            )
        return queryset, False

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return _badge(obj.status, BADGE.get(obj.status, ""))

    @admin.display(description="proposed by", ordering="proposer_label")
    def proposer(self, obj):
        if obj.source == "AI":
            return format_html("🤖 {} <em>(AI-proposed)</em>", obj.proposer_label)
        return obj.proposer_label

    age = staticmethod(time_column("created", "proposed"))

    @admin.display(description="took")
    def took(self, obj):
        if obj.started_at and obj.finished_at:
            return human_duration(obj.finished_at - obj.started_at)
        return "—"

    @admin.display(description="impact", ordering="impact")
    def impact_badge(self, obj):
        kind = {"HIGH": "bad", "MEDIUM": "warn"}.get(obj.impact, "")
        return badge(obj.impact, kind=kind)

    @admin.display(description="verification", ordering="verification")
    def verified(self, obj):
        """not run / passed / failed, in words and colour (no probe: nothing to check)."""
        return verification_badge(obj)

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
            emergency=form.cleaned_data.get("emergency", False),
            emergency_reason=form.cleaned_data.get("emergency_reason", ""),
        )
        obj.pk = proposal.action.pk
        obj._joined_message = "" if proposal.created else proposal.message
        if proposal.created and proposal.action.emergency:
            messages.warning(request, proposal.message)  # "EMERGENCY: ... 2 signature(s)"

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
            # Display: how long it ran, verification as not run / passed / failed, and the
            # incidents this action remediates (one query).
            "took": obj.took,
            "verification_words": verification_state(obj)[0],
            "verification_kind": verification_state(obj)[1],
            "remediates": list(obj.incidents.only("pk", "title")[:5]),
            "validity_minutes": approvals.rule_for(obj.impact).validity_seconds // 60,
        }
        return super().change_view(
            request, object_id, form_url, {**context, **(extra_context or {})}
        )


@admin.register(DiagnosticRun)
class DiagnosticRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "host", "command", "exit_badge", "requested_by", time_column("created"),
                    "action")  # fmt: skip

    @admin.display(description="exit", ordering="exit_code")
    def exit_badge(self, obj):
        if obj.exit_code is None:
            return "—"
        return badge(str(obj.exit_code), kind="ok" if obj.exit_code == 0 else "bad")

    list_filter = ("host",)
    list_select_related = ("host", "action__host")  # str(action) names its host
    paginator = EstimatedCountPaginator
    show_full_result_count = False


from pra import admin_windows  # noqa: E402, F401  (maintenance windows and freezes)
