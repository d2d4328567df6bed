"""System checks for remediation: the SSH key files the workers need."""

import os

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register


@register()
def check_ssh_keys(app_configs: object, **kwargs: object) -> list[CheckMessage]:
    problems: list[CheckMessage] = []
    for setting, purpose, code in (
        ("PRA_SSH_KEY_FILE", "execute actions", "pra.W001"),
        ("PRA_DIAG_SSH_KEY_FILE", "run diagnostics and verification", "pra.W002"),
    ):
        path = getattr(settings, setting)
        if not os.access(path, os.R_OK):
            problems.append(
                Warning(
                    f"{setting}={path} is not a readable file: the portal cannot {purpose}.",
                    hint="Generate a key pair (ssh-keygen -t ed25519) and set the variable.",
                    id=code,
                )
            )
    return problems


@register()
def check_window_impacts(app_configs: object, **kwargs: object) -> list[CheckMessage]:
    from pra.choices import Impact

    unknown = [i for i in settings.PRA_WINDOW_IMPACTS if i not in Impact.values]
    if not unknown:
        return []
    return [
        Error(
            f"PRA_WINDOW_IMPACTS names unknown impact level(s): {', '.join(unknown)}.",
            hint=f"Use a comma-separated list of {', '.join(Impact.values)}.",
            id="pra.E001",
        )
    ]
