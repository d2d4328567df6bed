"""Rendering the target-side files from the catalog (pra.target, pra_render_target).

Static checks only: shellcheck, visudo and the generated whitelist. Running the
scripts over SSH is in test_target_wrappers.py (where systemctl, podman, ... are
stand-ins because this machine has no systemd).
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from pra import target as target_module
from pra.catalog import CATALOG, catalog_fingerprint
from pra.devtarget import LocalTarget
from pra.target import SCRIPTS, TargetRenderError, parse_public_key, render_target


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    outdir = tmp_path_factory.mktemp("rendered")
    render_target(outdir)
    return outdir


@pytest.fixture(scope="module")
def pubkey(tmp_path_factory) -> Path:
    keyfile = tmp_path_factory.mktemp("keys") / "portal"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "portal@ops", "-f", str(keyfile)],
        check=True,
    )
    return keyfile.with_suffix(".pub")


def test_it_writes_every_file_with_its_mode(rendered):
    modes = {path.name: path.stat().st_mode & 0o777 for path in rendered.iterdir()}
    assert modes == {
        "pra-exec": 0o755,
        "pra-run": 0o755,
        "pra-diag": 0o755,
        "install.sh": 0o755,
        "sudoers-pra": 0o440,
        "authorized_keys": 0o600,
        "README.md": 0o644,
    }


def test_the_scripts_pass_shellcheck(rendered, tmp_path):
    """The wrappers, install.sh and the dev target's stand-ins (systemctl, podman, ...
    are stand-ins because this machine has no systemd) are all shellcheck-clean."""
    target = LocalTarget(tmp_path / "target")
    target.setup()
    scripts = [rendered / name for name in (*SCRIPTS, "install.sh")]
    scripts += sorted(target.standins_dir.iterdir())
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Warnings the unfilled placeholders cause, and only those: `exit @@DENIED_EXIT@@` (SC2242),
# `PATH=@@PATH@@` (SC2123), and variables assigned only inside the generated case blocks
# (SC2034, SC2154, and SC2317 for the code after them). The rendered scripts get no exclusion.
PLACEHOLDER_CODES = "SC2242,SC2123,SC2034,SC2154,SC2317"


def test_the_templates_pass_shellcheck_as_written():
    """The template files are bash that shellcheck reads as they are in the repository."""
    templates = sorted(Path(target_module.__file__).with_name("target_templates").iterdir())
    assert {t.name for t in templates} == {*SCRIPTS, "install.sh"}
    result = subprocess.run(
        ["shellcheck", "--shell=bash", f"--exclude={PLACEHOLDER_CODES}", *map(str, templates)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_visudo_accepts_the_sudoers_drop_in(rendered):
    result = subprocess.run(
        ["visudo", "-cf", str(rendered / "sudoers-pra")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sudoers_allows_only_pra_run_pinned_by_its_digest(rendered):
    text = (rendered / "sudoers-pra").read_text()
    digest = hashlib.sha256((rendered / "pra-run").read_bytes()).hexdigest()
    assert f"Cmnd_Alias PRA_RUN = sha256:{digest} /usr/local/bin/pra-run" in text
    assert "pra ALL=(root) NOPASSWD: PRA_RUN" in text
    assert "!requiretty" in text


def test_every_catalog_action_is_whitelisted_with_its_argv(rendered):
    pra_exec = (rendered / "pra-exec").read_text()
    pra_run = (rendered / "pra-run").read_text()
    for spec in CATALOG.values():
        assert f"\n    {spec.name}) patterns=(" in pra_exec
        assert f"\n    {spec.name})\n" in pra_run
        assert spec.command[0] in pra_run
    assert not re.search(r"\beval\b", pra_exec + pra_run)


def test_the_scripts_embed_the_catalog_fingerprint(rendered):
    for name in (*SCRIPTS, "sudoers-pra", "authorized_keys", "README.md"):
        assert catalog_fingerprint() in (rendered / name).read_text(), name


def test_it_refuses_options_that_are_unsafe_to_embed(tmp_path):
    for kwargs in (
        {"prefix": "/usr/local/bin; rm -rf /"},
        {"prefix": "relative/bin"},
        {"prefix": "/opt/../bin"},
        {"log_file": '/var/log/"x'},
        {"path": "/usr/bin:$HOME/bin"},
        {"run_user": "pra ALL=(ALL) ALL"},
        {"exec_pubkey": "not a key"},
    ):
        with pytest.raises(TargetRenderError):
            render_target(tmp_path, **kwargs)


def test_parse_public_key_refuses_private_and_optioned_keys(pubkey):
    line = pubkey.read_text()
    assert parse_public_key(line).startswith("ssh-ed25519 AAAA")
    private = pubkey.with_suffix("").read_text()
    for bogus in (private, f'command="/bin/sh" {line}', line + line, "ssh-ed25519 AAAAnotbase64!"):
        with pytest.raises(TargetRenderError):
            parse_public_key(bogus)


def test_the_command_renders_into_a_directory(tmp_path, pubkey):
    outdir = tmp_path / "out"
    call_command(
        "pra_render_target",
        str(outdir),
        "--prefix=/opt/pra/bin",
        "--user=opsbot",
        f"--exec-pubkey={pubkey}",
        f"--diag-pubkey={pubkey}",
        stdout=io.StringIO(),
    )
    keys = (outdir / "authorized_keys").read_text()
    key = " ".join(pubkey.read_text().split()[:2])
    assert f'command="/opt/pra/bin/pra-exec",restrict {key} portal@ops' in keys
    assert f'command="/opt/pra/bin/pra-diag",restrict {key} portal@ops' in keys
    assert "opsbot ALL=(root) NOPASSWD: PRA_RUN" in (outdir / "sudoers-pra").read_text()
    assert 'sudo -n -- "$PRA_RUN"' in (outdir / "pra-exec").read_text()


def test_the_command_without_sudo_runs_pra_run_directly(tmp_path):
    call_command("pra_render_target", str(tmp_path), "--no-sudo", stdout=io.StringIO())
    pra_exec = (tmp_path / "pra-exec").read_text()
    assert "sudo" not in pra_exec.split("\nexec ", 1)[1]
    assert (
        '# command="/usr/local/bin/pra-exec",restrict <exec'
        in (tmp_path / "authorized_keys").read_text()
    )


def test_the_command_refuses_a_bogus_pubkey_file(tmp_path, pubkey):
    bogus = tmp_path / "bogus.pub"
    bogus.write_text("this is not a key\n")
    binary = tmp_path / "binary.pub"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    cases = {
        str(bogus): "not an OpenSSH public key",
        str(pubkey.with_suffix("")): "not an OpenSSH public key",  # the private key
        str(tmp_path / "missing.pub"): "Cannot read the exec public key",
        str(binary): "Cannot read the exec public key",
    }
    for keyfile, message in cases.items():
        with pytest.raises(CommandError, match=message):
            call_command("pra_render_target", str(tmp_path / "out"), f"--exec-pubkey={keyfile}")
    assert not (tmp_path / "out").exists()


def _diag(script: Path, command: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": command}
    return subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=30
    )


def test_the_target_can_limit_connectivity_ports_itself(tmp_path):
    """pra-diag run directly (no SSH needed for an argument check)."""
    import socket
    from contextlib import closing

    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    call_command("pra_render_target", str(tmp_path), "--connectivity-ports", f"22,{closed}",
                 stdout=io.StringIO())  # fmt: skip
    script = tmp_path / "pra-diag"
    refused = _diag(script, "connectivity 127.0.0.1 5432")
    assert refused.returncode == 97
    assert refused.stderr == f"DENIED: port 5432 is not allowed here (allowed: 22 {closed})\n"
    allowed = _diag(script, f"connectivity 127.0.0.1 {closed}")
    assert (allowed.returncode, allowed.stdout) == (1, f"FAIL 127.0.0.1:{closed}\n")
    render_target(tmp_path / "any")  # the default: any port, as before
    assert _diag(tmp_path / "any" / "pra-diag", "connectivity 127.0.0.1 5432").returncode != 97
    for bad in ([0], [70000], [], ["22"]):
        with pytest.raises(TargetRenderError, match="connectivity port"):
            render_target(tmp_path / "bad", connectivity_ports=bad)
    with pytest.raises(CommandError, match="takes numbers"):
        call_command("pra_render_target", str(tmp_path), "--connectivity-ports", "ssh")
