from importlib import import_module

from django.apps import AppConfig

from portal import mcp


class PraConfig(AppConfig):
    name = "pra"
    verbose_name = "Remediation"

    def ready(self) -> None:
        import_module("pra.dashboard")  # registers the dashboard panel
        import_module("pra.charts")  # registers its charts (portal.charts)
        mcp.register_tools("pra.mcp")  # its MCP tools (imported when MCP is served)
        import_module("pra.checks")  # registers the system checks
        from portal.metrics import REGISTRY
        from pra.metrics import RemediationCollector

        REGISTRY.register(RemediationCollector())
