"""Settings fail loudly at start-up; runtime problems show as system checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import run_checks

BASE_DIR = Path(__file__).resolve().parents[2]


def _settings_import(env_overrides: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
    )


def test_it_refuses_to_start_without_secret_key_when_debug_is_off():
    result = _settings_import({"DEBUG": "0"})
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_it_refuses_a_malformed_debug_flag():
    result = _settings_import({"DEBUG": "perhaps"})
    assert result.returncode != 0
    assert "DEBUG='perhaps' is not a boolean" in result.stderr


def test_debug_generates_a_secret_key_once_and_reuses_it(tmp_path):
    env = {"DEBUG": "1", "PORTAL_VAR_DIR": str(tmp_path)}
    assert _settings_import(env).returncode == 0
    first = (tmp_path / "secret_key").read_text()
    assert _settings_import(env).returncode == 0
    assert (tmp_path / "secret_key").read_text() == first
    assert len(first) >= 50


def test_unreachable_redis_is_a_warning_not_a_crash(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    messages = run_checks()
    ids = [m.id for m in messages]
    assert "portal.W001" in ids


def test_reachable_redis_raises_no_warning():
    assert "portal.W001" not in [m.id for m in run_checks()]


def test_check_deploy_passes_with_production_settings(tmp_path):
    for name in ("exec", "diag"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True
        )
    env = {
        k: v for k, v in os.environ.items() if k not in {"SECURE_SSL_REDIRECT", "STATIC_MANIFEST"}
    }
    env.update(
        DEBUG="0",
        SECRET_KEY="k" * 20 + "Zq9!x" * 10,
        ALLOWED_HOSTS="ops.example.com",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="1",
        SECURE_HSTS_PRELOAD="1",
        PORTAL_VAR_DIR=str(tmp_path),
        PRA_SSH_KEY_FILE=str(tmp_path / "exec"),
        PRA_DIAG_SSH_KEY_FILE=str(tmp_path / "diag"),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.django_db
def test_models_and_migrations_agree():
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
