from importlib import import_module

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_roles(sender, using="default", **kwargs):
    from portal.roles import sync_roles

    sync_roles()


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        import_module("portal.checks")  # registers the system checks

        # After every migrate, so permissions of models added later join the roles.
        post_migrate.connect(_sync_roles, dispatch_uid="portal.sync_roles")
