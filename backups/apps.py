from importlib import import_module

from django.apps import AppConfig


class BackupsConfig(AppConfig):
    name = "backups"
    verbose_name = "Backups"

    def ready(self) -> None:
        import_module("backups.dashboard")  # registers the dashboard panel
        import_module("backups.checks")  # registers the system checks
