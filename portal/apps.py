from importlib import import_module

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_roles(sender, using="default", **kwargs):
    from django.apps import apps

    # post_migrate fires once per app, and each app's permissions are created by its
    # own signal: syncing after the last app's sees them all, and does it once.
    if sender is not list(apps.get_app_configs())[-1]:
        return
    from portal.roles import sync_roles

    sync_roles()


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        import_module("portal.checks")  # registers the system checks
        from portal.metrics import REGISTRY, NotificationCollector

        REGISTRY.register(NotificationCollector())

        # After every migrate, so permissions of models added later join the roles.
        post_migrate.connect(_sync_roles, dispatch_uid="portal.sync_roles")
