"""The remediations' part of the charts page (``portal.charts`` draws it): the actions'
approval waits for the portal's "time to approval" chart. Registered by
``PraConfig.ready()``."""

from __future__ import annotations

from datetime import datetime

from portal.charts import MAX_POINTS, Wait, approval_waits
from pra.models import PRAAction


@approval_waits
def action_waits(start: datetime) -> list[Wait]:
    """Actions fully signed since ``start``, less the LOW ones the auto-approve rule
    signed (approved by the rule, not people)."""
    actions = (
        PRAAction.objects.filter(approved_at__gte=start)
        .exclude(impact="LOW", auto_approve_requested=True)
        .order_by("-approved_at")
        .values_list("pk", "impact", "created", "approved_at")[:MAX_POINTS]
    )
    return [
        Wait(f"action #{pk}", impact, created, at)
        for pk, impact, created, at in actions
        if at is not None  # filtered on approved_at above: never None here
    ]
