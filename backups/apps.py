from importlib import import_module

from django.apps import AppConfig

from portal import mcp


class BackupsConfig(AppConfig):
    name = "backups"
    verbose_name = "Backups"

    def ready(self) -> None:
        import_module("backups.dashboard")  # registers the dashboard panel
        import_module("backups.charts")  # registers its charts (portal.charts)
        mcp.register_tools("backups.mcp")  # its MCP tools (imported when MCP is served)
        import_module("backups.checks")  # registers the system checks
