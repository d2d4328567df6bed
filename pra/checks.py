"""System checks for remediation: the SSH key files the workers need."""

import os

from django.conf import settings
from django.core.checks import Warning, register


@register()
def check_ssh_keys(app_configs, **kwargs):
    problems = []
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
