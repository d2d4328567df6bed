"""Dashboard panels: each app registers a function returning one panel's context."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest

PanelFn = Callable[[HttpRequest], dict]
_PANELS: list[PanelFn] = []


def panel(fn: PanelFn) -> PanelFn:
    """Decorator: register a dashboard panel provider."""
    _PANELS.append(fn)
    return fn


def collect_panels(request: HttpRequest) -> list[dict]:
    return [fn(request) for fn in _PANELS]
