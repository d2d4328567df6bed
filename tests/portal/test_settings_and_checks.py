"""Settings fail loudly at start-up; runtime problems show as system checks."""

import base64
import os
import secrets
import shlex
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


def _readme_production_env() -> dict[str, str]:
    """The variables the README's "Running in production" section exports."""
    readme = (BASE_DIR / "README.md").read_text()
    section = readme.split("## Running in production", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    env = {}
    for line in block.splitlines():
        if line.startswith("export "):
            for item in shlex.split(line.removeprefix("export ")):
                name, _, value = item.partition("=")
                env[name] = value
    assert "python manage.py check --deploy` should report no issues" in section
    return env


# What a secret file named in the README holds, by variable (anything else: a random key).
SECRET_FILE_CONTENT = {
    "AUDIT_HMAC_KEYS_FILE": lambda: "k1:" + secrets.token_urlsafe(48),
    "BACKUP_ENCRYPTION_KEYS_FILE": lambda: (
        "b1:" + base64.b64encode(secrets.token_bytes(32)).decode()
    ),
}


def test_check_deploy_passes_with_the_readmes_production_environment(tmp_path):
    """Exactly the README's exports, nothing else from this process's environment (its
    placeholders filled in: the test's database and Redis for "...", a generated secret
    in a file for each ``*_FILE``): what the README promises must hold."""
    readme_env = _readme_production_env()
    assert readme_env.get("DEBUG") == "0"
    env = {"PATH": os.environ["PATH"], "PORTAL_VAR_DIR": str(tmp_path)}
    for name, value in readme_env.items():
        if name.endswith("_FILE"):
            path = tmp_path / name.lower()
            path.write_text(SECRET_FILE_CONTENT.get(name, lambda: secrets.token_urlsafe(64))())
            value = str(path)
        elif "..." in value:
            assert name in ("DATABASE_URL", "REDIS_URL"), f"README placeholder {name}={value}"
            value = os.environ[name]
        env[name] = value
    # The SSH keys live at their default paths under the var directory.
    (tmp_path / "ssh").mkdir()
    for name in ("pra_exec_ed25519", "pra_diag_ed25519"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ssh" / name)],
            check=True,
        )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues" in result.stdout, result.stdout


@pytest.mark.django_db
def test_models_and_migrations_agree():
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
