"""The base app knows no feature app (issue 16): ``portal/`` imports ``pra``, ``incidents``
or ``backups`` only in its composition files; the apps plug in through registries filled
from their ``ready()`` (here: the charts page and the template library they own)."""

from __future__ import annotations

import ast
from pathlib import Path

from django.template.backends.django import get_installed_libraries

from portal import charts

BASE_DIR = Path(__file__).resolve().parents[2]
FEATURE_APPS = {"pra", "incidents", "backups"}
# The composition files: urls, asgi, the API router, the cron registry, settings, dev tooling.
COMPOSITION = {"urls.py", "asgi.py", "api.py", "cron.py", "settings.py", "devstack.py"}


def _feature_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [
            f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in FEATURE_APPS
        ]
    return found


def test_portal_imports_no_feature_app_outside_its_composition_files():
    offenders = [
        hit
        for path in sorted((BASE_DIR / "portal").rglob("*.py"))
        if "migrations" not in path.parts
        and path.relative_to(BASE_DIR / "portal").as_posix() not in COMPOSITION
        for hit in _feature_imports(path)
    ]
    assert offenders == []
    # The check can fail: a composition file does import feature apps.
    assert _feature_imports(BASE_DIR / "portal" / "cron.py")


def test_each_app_registers_its_own_charts_in_page_order():
    providers = [(order, fn.__module__, fn.__name__) for order, fn in charts.chart_providers()]
    assert providers == [
        (10, "incidents.charts", "incidents_per_day"),
        (20, "incidents.charts", "detect_and_resolve"),
        (30, "incidents.charts", "autopatch_rates"),
        (40, "portal.charts", "time_to_approval"),
        (50, "backups.charts", "backup_runs"),
        (60, "backups.charts", "drill_restore_times"),
    ]
    assert [fn.__module__ for fn in charts.approval_wait_sources()] == [
        "pra.charts",
        "backups.charts",
    ]


def test_the_backups_template_library_keeps_its_name_in_its_own_app():
    assert get_installed_libraries()["portal_backups"] == "backups.templatetags.portal_backups"
