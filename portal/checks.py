"""System checks: misconfiguration shows up in `manage.py check`, not as a crash."""

from __future__ import annotations

import os

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register


@register()
def check_redis(app_configs: object, **kwargs: object) -> list[CheckMessage]:
    from portal.lib.redis import ping

    error = ping(settings.REDIS_URL, timeout=0.5)
    if error is None:
        return []
    return [
        Warning(
            f"Redis at {settings.REDIS_URL} is unreachable: {error}",
            hint="Jobs, live updates and health checks need Redis. Start it or set REDIS_URL.",
            id="portal.W001",
        )
    ]


@register()
def check_var_dir(app_configs: object, **kwargs: object) -> list[CheckMessage]:
    var = settings.VAR_DIR
    if var.exists() and not os.access(var, os.W_OK):
        return [Error(f"{var} is not writable.", hint="Set PORTAL_VAR_DIR.", id="portal.E001")]
    return []


@register(Tags.security, deploy=True)
def check_metrics_access(app_configs: object, **kwargs: object) -> list[CheckMessage]:
    open_to = [ip for ip in settings.METRICS_ALLOWED_IPS if ip not in {"127.0.0.1", "::1"}]
    if open_to and not settings.METRICS_TOKEN:
        return [
            Warning(
                f"/metrics is open without a token to {', '.join(open_to)}.",
                hint="Set METRICS_TOKEN, or keep METRICS_ALLOWED_IPS to loopback.",
                id="portal.W002",
            )
        ]
    return []
