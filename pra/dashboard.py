"""The remediation panel of the dashboard: waiting approvals and running actions."""

from django.urls import reverse

from portal.dashboard import panel
from pra.choices import ActionStatus
from pra.models import PRAAction


@panel
def remediation_panel(request) -> dict:
    open_actions = list(
        PRAAction.objects.select_related("host")
        .filter(status__in=[ActionStatus.PROPOSED, ActionStatus.APPROVED, ActionStatus.EXECUTING])
        .order_by("-created")[:20]
    )
    recent = list(
        PRAAction.objects.select_related("host")
        .exclude(status__in=[ActionStatus.PROPOSED, ActionStatus.APPROVED, ActionStatus.EXECUTING])
        .order_by("-status_changed_at")[:10]
    )
    return {
        "template": "pra/panel.html",
        "open": open_actions,
        "recent": recent,
        "list_url": reverse("admin:pra_praaction_changelist"),
    }
