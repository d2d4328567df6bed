"""Incidents admin: list with severity/status filters, a detail page with the whole chain."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from incidents import actions, storms
from incidents.choices import INCIDENT_OPEN, AttemptStatus, CommandKind, Severity
from incidents.models import (
    Agent,
    AgentCommand,
    AutoPatchAttempt,
    Decision,
    DetectionRule,
    GroupingRule,
    Incident,
    IncidentGroup,
    OpsPolicy,
)
from incidents.signing import format_us
from portal import approvals
from portal.admin_approvals import safe_next
from portal.admin_base import AuditedConfigAdmin, ReadOnlyAdmin
from portal.admin_display import (
    badge,
    duration_column,
    severity_column,
    status_column,
    time_column,
)
from portal.lib.pagination import EstimatedCountPaginator
from portal.models import AuditEvent
from pra.admin import verification_state

MANAGE = "portal.manage_portal"
SEVERITY_BADGE = {1: "", 2: "warn", 3: "bad", 4: "bad"}


@admin.register(Agent)
class AgentAdmin(AuditedConfigAdmin):
    list_display = ("name", "kind", "environment", "version", time_column("last_seen", "last seen"),
                    "missing", "enabled")  # fmt: skip
    list_filter = ("kind", "environment", "missing", "enabled")
    search_fields = ("name", "owner", "tags")
    raw_id_fields = ("depends_on",)  # a fleet is too big for a select box
    readonly_fields = (
        "version",
        "last_seen",
        "last_telemetry",
        "alert_after",
        "missing",
        "last_signed",
        "created",
    )

    @admin.display(description="last signed heartbeat")
    def last_signed(self, obj):
        """The replay high-water mark: a heartbeat must be signed later than this."""
        if obj.last_signed_us is None:
            return "never"
        return f"{format_us(obj.last_signed_us)} (nonce {obj.last_nonce})"

    def has_add_permission(self, request):
        return False  # `manage.py agent_add` shows the secret once

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(MANAGE)

    def has_delete_permission(self, request, obj=None):
        return False

    def config_update(self, request, obj, changes):
        return actions.update_agent(obj.pk, by=request.user, **changes)


@admin.register(DetectionRule)
class DetectionRuleAdmin(AuditedConfigAdmin):
    list_display = ("key", "kind", "metric", "warning", "critical", "enabled")
    list_editable = ("warning", "critical", "enabled")

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(MANAGE)

    def has_add_permission(self, request):
        return request.user.has_perm(MANAGE)

    def has_delete_permission(self, request, obj=None):
        return False

    # Form and list edits alike (list_editable saves through these too).
    def config_create(self, request, fields):
        return actions.create_rule(by=request.user, **fields)

    def config_update(self, request, obj, changes):
        return actions.update_rule(obj.pk, by=request.user, **changes)


@admin.register(GroupingRule)
class GroupingRuleAdmin(AuditedConfigAdmin):
    """Storm grouping rules (data): who may edit them is who may edit detection rules."""

    list_display = (
        "name", "enabled", "position", "cause", "group_by", "tag", "min_agents", "min_percent",
        "window_seconds", "wait_seconds",
    )  # fmt: skip
    list_editable = ("enabled",)

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(MANAGE)

    def has_add_permission(self, request):
        return request.user.has_perm(MANAGE)

    def has_delete_permission(self, request, obj=None):
        return False  # switch a rule off instead: storms keep their rule

    def config_create(self, request, fields):
        return actions.create_grouping_rule(by=request.user, **fields)

    def config_update(self, request, obj, changes):
        return actions.update_grouping_rule(obj.pk, by=request.user, **changes)


@admin.register(IncidentGroup)
class IncidentGroupAdmin(admin.ModelAdmin):
    """Storms: the parent incident, its members, acknowledge and resolve."""

    list_display = (
        "id", "severity_badge", status_column(), "title", "key", "cause", "members_total",
        time_column("first_seen", "first seen"), time_column("last_seen", "last seen"),
        "escalation_level",
    )  # fmt: skip
    list_filter = ("status", "severity", "cause")
    search_fields = ("title", "key", "cause")
    change_form_template = "admin/incidents/incidentgroup/change_form.html"
    MEMBERS_SHOWN = 200

    severity_badge = staticmethod(severity_column())

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/act/<str:verb>/", wrap(self.act_view), name="incidents_incidentgroup_act"
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        from portal.models import Notification

        group = get_object_or_404(IncidentGroup.objects.select_related("rule"), pk=object_id)
        members = group.members.select_related("agent", "suppressed_by").order_by("-opened_at")
        user = request.user
        context = {
            "group": group,
            "severity_label": Severity(group.severity).label,
            "open_members": members.filter(status__in=INCIDENT_OPEN).count(),
            "members": members[: self.MEMBERS_SHOWN],
            "members_shown": self.MEMBERS_SHOWN,
            "notifications": Notification.objects.filter(
                subject_type="incidents.incidentgroup", subject_id=str(group.pk)
            )
            .select_related("channel")
            .order_by("id")[:100],
            "trail": AuditEvent.objects.filter(
                subject_type="incidents.incidentgroup", subject_id=str(group.pk)
            ).order_by("id"),
            "can_ack": user.has_perm("portal.propose_action")
            or user.has_perm(approvals.APPROVE_PERMISSION),
        }
        return super().change_view(
            request, object_id, form_url, {**context, **(extra_context or {})}
        )

    def act_view(self, request, pk, verb):
        return require_POST(self._act)(request, pk, verb)

    def _act(self, request, pk, verb):
        group = get_object_or_404(IncidentGroup, pk=pk)
        try:
            if verb == "acknowledge":
                storms.acknowledge_group(group, by=request.user)
            elif verb == "resolve":
                if not storms.resolve_group(
                    group, by=request.user, reason=request.POST.get("reason", "")
                ):
                    raise actions.IncidentError("state", f"Storm #{group.pk} is resolved.")
            else:
                raise PermissionDenied
        except actions.IncidentError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"{verb}: done.")
        return HttpResponseRedirect(reverse("admin:incidents_incidentgroup_change", args=[pk]))


@admin.register(OpsPolicy)
class OpsPolicyAdmin(AuditedConfigAdmin):
    list_display = (
        "__str__", "auto_remediation_enabled", "max_auto_severity", "multisig_min_severity",
        "canary_percent", time_column("updated"),
    )  # fmt: skip
    # A fleet is thousands of agents: search them (AgentAdmin.search_fields), never render
    # every one into the page.
    autocomplete_fields = ("whitelist",)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(MANAGE)

    def config_update(self, request, obj, changes):
        # One POLICY_CHANGED event, the kill switch included (update_policy).
        update = actions.update_policy(by=request.user, **changes)
        if update.cancelled:
            messages.warning(request, f"Kill switch: cancelled {len(update.cancelled)} attempt(s).")
        return update.policy


@admin.register(AutoPatchAttempt)
class AutoPatchAttemptAdmin(ReadOnlyAdmin):
    list_display = (
        "id", "incident_link", "agent", "from_version", "target_version", status_column(),
        severity_column(), time_column("created"), "detail",
    )  # fmt: skip

    @admin.display(description="incident", ordering="incident")
    def incident_link(self, obj):
        url = reverse("admin:incidents_incident_change", args=[obj.incident_id])
        return format_html('<a href="{}">#{}</a>', url, obj.incident_id)

    list_filter = ("status",)


@admin.register(Decision)
class DecisionAdmin(ReadOnlyAdmin):
    list_display = ("id", "incident_link", time_column("created"), "source", "action",
                    "patch_version", "confidence", "outcome_badge")  # fmt: skip

    @admin.display(description="incident", ordering="incident")
    def incident_link(self, obj):
        url = reverse("admin:incidents_incident_change", args=[obj.incident_id])
        return format_html('<a href="{}">#{}</a>', url, obj.incident_id)

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, obj):
        return badge(obj.outcome) if obj.outcome else "—"

    list_filter = ("source", "action", "outcome")


@admin.register(AgentCommand)
class AgentCommandAdmin(ReadOnlyAdmin):
    list_display = ("id", "agent", "kind", status_column(), time_column("created"),
                    "requested_by")  # fmt: skip
    list_filter = ("status", "kind")


class CommandForm(forms.Form):
    kind = forms.ChoiceField(choices=CommandKind.choices)
    version = forms.RegexField(regex=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}$", required=False)


def _attempt_of(incident: Incident, raw: str) -> AutoPatchAttempt:
    if not (raw.isascii() and raw.isdigit() and len(raw) < 12):
        raise actions.IncidentError("invalid", "No such auto-patch attempt.")
    return get_object_or_404(AutoPatchAttempt, pk=int(raw), incident=incident)


class IncidentAgentFilter(admin.SimpleListFilter):
    """Filter by agent without listing the fleet (2,000 agents made the page 200 KB): the
    sidebar offers the agents that have an open incident now (at most ``SHOWN``), and
    ``?agent=<id>`` filters by any agent."""

    title = "agent"
    parameter_name = "agent"
    SHOWN = 20

    def lookups(self, request, model_admin):
        open_now = (
            Agent.objects.filter(incidents__status__in=INCIDENT_OPEN)
            .distinct()
            .order_by("name")
            .values_list("pk", "name")[: self.SHOWN]
        )
        choices = [(str(pk), name) for pk, name in open_now]
        value = self.value()
        if value and value.isdigit() and value not in {pk for pk, _ in choices}:
            name = Agent.objects.filter(pk=int(value)).values_list("name", flat=True).first()
            choices.append((value, name or f"agent #{value}"))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if not (value.isascii() and value.isdigit() and len(value) < 12):
            return queryset.none()
        return queryset.filter(agent_id=int(value))


def _may_sign(attempt: AutoPatchAttempt, user) -> bool:
    """The Approve button only for whom ``check_signer`` lets sign (not an approver who
    signed already, nor one the rules exclude); the endpoint checks everything again."""
    try:
        approvals.check_signer(
            attempt, user, fingerprint=None, confirmation=attempt.approval_confirmation_text
        )
    except approvals.ApprovalError:
        return False
    return True


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    list_display = (
        "id", "severity_badge", status_column(), "agent", "title",
        time_column("opened_at", "opened"), duration_column("mttd", "MTTD", ordering=None),
        duration_column("mttr", "MTTR", ordering=None), "escalation_level",
    )  # fmt: skip
    list_filter = ("severity", "status", "auto_resolved", IncidentAgentFilter)
    search_fields = ("title", "agent__name", "cause")
    list_select_related = ("agent",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    change_form_template = "admin/incidents/incident/change_form.html"

    severity_badge = staticmethod(severity_column())

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/act/<str:verb>/", wrap(self.act_view), name="incidents_incident_act"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        incident = get_object_or_404(
            Incident.objects.select_related(
                "agent", "group", "suppressed_by", "acknowledged_by", "remediation__host"
            ),
            pk=object_id,
        )
        attempts = list(incident.attempts.select_related("agent"))
        waiting = [a for a in attempts if a.status == AttemptStatus.PENDING and a.needs_approval]
        user = request.user
        context = {
            "incident": incident,
            "events": incident.events.all(),
            "decisions": incident.decisions.all(),
            "attempts": attempts,
            "waiting": [
                {
                    "attempt": a,
                    "tally": approvals.tally(a),
                    "fingerprint": a.approval_fingerprint(),
                    "rule": approvals.rule_for(a.approval_impact),
                    "expires_at": a.approval_expires_at,
                    "can_sign": _may_sign(a, user),
                }
                for a in waiting
            ],  # fmt: skip
            "can_approve": user.has_perm(approvals.APPROVE_PERMISSION),
            "can_operate": user.has_perm("portal.propose_action"),
            "can_command": user.has_perm(approvals.APPROVE_PERMISSION),
            "can_ack": user.has_perm("portal.propose_action")
            or user.has_perm(approvals.APPROVE_PERMISSION),
            "severity_label": Severity(incident.severity).label,
            "remediation": incident.remediation,
            "remediation_verification": verification_state(incident.remediation)[0]
            if incident.remediation_id
            else "",
            "remediation_trail": (
                AuditEvent.objects.filter(
                    subject_type="pra.praaction", subject_id=str(incident.remediation_id)
                ).order_by("id")
                if incident.remediation_id
                else []
            ),
            "command_kinds": CommandKind.choices,
        }
        return super().change_view(
            request, object_id, form_url, {**context, **(extra_context or {})}
        )

    def act_view(self, request, pk, verb):
        return require_POST(self._act)(request, pk, verb)

    def _act(self, request, pk, verb):
        incident = get_object_or_404(Incident.objects.select_related("agent"), pk=pk)
        user, data = request.user, request.POST
        try:
            if verb == "acknowledge":
                actions.acknowledge_incident(incident, by=user)
            elif verb == "resolve":
                actions.resolve_incident(incident, by=user, reason=data.get("reason", ""))
            elif verb == "approve-patch":
                attempt = _attempt_of(incident, data.get("attempt", ""))
                actions.approve_attempt(
                    attempt,
                    by=user,
                    confirmation=data.get("confirmation", ""),
                    fingerprint=data.get("fingerprint", ""),
                )
            elif verb == "reject-patch":
                attempt = _attempt_of(incident, data.get("attempt", ""))
                actions.reject_attempt(attempt, by=user, reason=data.get("reason", ""))
            elif verb == "command":
                # A manual update/rollback bypasses the auto-patch policy: approvers only.
                if not user.has_perm(approvals.APPROVE_PERMISSION):
                    raise PermissionDenied
                form = CommandForm(data)
                if not form.is_valid():
                    raise actions.IncidentError("invalid", form.errors.as_text())
                payload = (
                    {"version": form.cleaned_data["version"]}
                    if form.cleaned_data["version"]
                    else {}
                )
                actions.send_command(incident.agent, form.cleaned_data["kind"], payload, by=user)
            else:
                raise PermissionDenied
        except actions.IncidentError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"{verb}: done.")
        page = reverse("admin:incidents_incident_change", args=[pk])
        return HttpResponseRedirect(safe_next(request, page))  # the inbox posts next=/
