"""Dashboard panel: open incidents by severity (updated live) and the self-healing KPIs."""

from django.db.models import Count
from django.urls import reverse

from incidents.choices import INCIDENT_OPEN, Severity
from incidents.metrics import kpis
from incidents.models import Incident
from portal.dashboard import panel


@panel
def incidents_panel(request) -> dict:
    counts = dict(
        Incident.objects.filter(status__in=INCIDENT_OPEN)
        .values_list("severity")
        .annotate(n=Count("id"))
        .values_list("severity", "n")
    )
    return {
        "template": "incidents/panel.html",
        "by_severity": [(s.label, s.value, counts.get(s.value, 0)) for s in reversed(Severity)],
        "open": Incident.objects.select_related("agent")
        .filter(status__in=INCIDENT_OPEN)
        .order_by("-severity", "-opened_at")[:15],
        "kpis": kpis(),
        "list_url": reverse("admin:incidents_incident_changelist"),
    }
