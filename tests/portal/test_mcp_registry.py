"""The MCP core (``portal.mcp``) builds its one server from the tools modules the apps
register in ``ready()``; it imports no feature app itself, and ``manage.py`` commands
that do not serve MCP never import the SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from portal import mcp

BASE_DIR = Path(__file__).resolve().parents[2]


def test_each_app_registers_its_own_tools_module_in_app_order():
    assert mcp.tool_modules() == ("pra.mcp", "incidents.mcp", "backups.mcp")
    mcp.register_tools("pra.mcp")  # again: no-op
    assert mcp.tool_modules().count("pra.mcp") == 1


def test_the_server_serves_every_registered_module_s_tools_and_instructions():
    import anyio

    from portal.mcp import core

    server = mcp.get_server()
    names = [t.name for t in anyio.run(server.list_tools)]
    declared = [
        spec.options.get("name") or spec.fn.__name__
        for module in mcp.tool_modules()
        for spec in core.TOOLS[module]
    ]
    assert names == declared
    assert {"list_hosts", "list_incidents", "backup_status"} <= set(names)
    assert server.instructions.startswith("Ops Portal remediation tools.")
    assert mcp.get_server() is server


def test_the_core_imports_no_feature_app():
    for path in (BASE_DIR / "portal" / "mcp").glob("*.py"):
        for line in path.read_text().splitlines():
            assert not line.lstrip().startswith(
                ("from pra", "import pra", "from incidents", "from backups")
            ), f"{path.name}: {line}"


def test_a_command_that_does_not_serve_mcp_does_not_import_the_sdk():
    code = (
        "import sys, django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('check', verbosity=0)\n"
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        env={"DJANGO_SETTINGS_MODULE": "portal.settings", "DEBUG": "1", "PATH": "/usr/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
