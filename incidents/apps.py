from importlib import import_module

from django.apps import AppConfig
from django.db.models.signals import post_migrate

from portal import mcp


def ensure_defaults(sender=None, **kwargs) -> None:
    """Default rules and the policy row exist after every migrate (and test flush)."""
    from incidents.models import DetectionRule, OpsPolicy
    from incidents.rules import DEFAULT_RULES

    for rule in DEFAULT_RULES:
        DetectionRule.objects.get_or_create(key=rule["key"], defaults=rule)
    OpsPolicy.objects.get_or_create(pk=1)


class IncidentsConfig(AppConfig):
    name = "incidents"
    verbose_name = "Incidents"

    def ready(self) -> None:
        import_module("incidents.dashboard")  # registers the dashboard panel
        import_module("incidents.charts")  # registers its charts (portal.charts)
        mcp.register_tools("incidents.mcp")  # its MCP tools (imported when MCP is served)
        from incidents.metrics import IncidentCollector
        from portal.metrics import REGISTRY

        REGISTRY.register(IncidentCollector())
        post_migrate.connect(ensure_defaults, sender=self, dispatch_uid="incidents.defaults")
