"""The JSON API (django-ninja): session or bearer-token auth, JSON errors, OpenAPI at /api/docs.

The schema and the docs page need a login (or an API token) with the view role, like
everything else here. The Swagger UI page loads its script and styles from the portal
(django-ninja's own copies, ``docs_asset``), never from a CDN.
"""

from __future__ import annotations

import json
from functools import wraps
from pathlib import Path

import ninja
from django.contrib.auth.views import redirect_to_login
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
)
from django.middleware.csrf import get_token
from django.urls import reverse
from django.utils.html import escape
from ninja import NinjaAPI
from ninja.openapi.docs import Swagger
from ninja.security import HttpBearer, django_auth

from portal.tokens import authenticate_token


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        user = authenticate_token(token, scope="api")
        if user is not None:
            request.user = user
        return user


VIEW_PERMISSION = "portal.view_portal"


def _docs_user(request: HttpRequest):
    """The session user, or the user of a valid API-scope bearer token (for schema tools)."""
    if request.user.is_authenticated:
        return request.user
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and raw.strip():
        return authenticate_token(raw.strip(), scope="api")
    return None


def docs_login_required(view):
    """The schema, the docs page and its assets: login (or API token) and the view role.
    Anonymous browsers go to the login page; anonymous clients of JSON get a 401."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        user = _docs_user(request)
        if user is None:
            if request.path.endswith(".json"):
                return JsonResponse(
                    {"error": "unauthenticated", "message": "Log in or send an API token."},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="ops-portal"'},
                )
            return redirect_to_login(request.get_full_path())
        if not user.has_perm(VIEW_PERMISSION):
            return JsonResponse(
                {"error": "permission", "message": f"missing permission {VIEW_PERMISSION}"},
                status=403,
            )
        request.user = user
        return view(request, *args, **kwargs)

    return wrapped


NINJA_STATIC = Path(ninja.__file__).resolve().parent / "static" / "ninja"
DOCS_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-init.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
    "favicon.png": "image/png",
}

SWAGGER_PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="{css}">
  <link rel="icon" href="{icon}" type="image/svg+xml">
</head>
<body data-csrf-token="{csrf}" data-api-csrf="true">
  <script type="application/json" id="swagger-settings">{settings}</script>
  <div id="swagger-ui"></div>
  <script src="{bundle}"></script>
  <script src="{init}"></script>
</body>
</html>
"""


class LocalSwagger(Swagger):
    """ninja's Swagger page with every asset served by the portal itself.

    ninja uses its bundled files only when "ninja" is an installed app (and a CDN
    otherwise); the portal serves them from the package instead (``docs_asset``), so
    the page works the same with or without collectstatic and reaches no other host.
    """

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs) -> HttpResponse:
        settings = {**self.settings, "url": self.get_openapi_url(api, kwargs)}
        # "</" cannot end the script element early; the page needs no other escaping.
        settings_json = json.dumps(settings, indent=1).replace("</", "<\\/")

        def asset(name: str) -> str:
            return escape(reverse("api_docs_asset", args=[name]))

        html = SWAGGER_PAGE.format(
            title=escape(api.title),
            css=asset("swagger-ui.css"),
            icon=asset("favicon.svg"),
            csrf=escape(get_token(request)),
            settings=settings_json,
            bundle=asset("swagger-ui-bundle.js"),
            init=asset("swagger-ui-init.js"),
        )
        return HttpResponse(html)


@docs_login_required
def docs_asset(request: HttpRequest, name: str) -> FileResponse:
    """One of the docs page's files, from django-ninja's package (fixed list of names)."""
    if name not in DOCS_ASSETS:
        raise Http404("No such docs asset.")
    response = FileResponse((NINJA_STATIC / name).open("rb"), content_type=DOCS_ASSETS[name])
    response["Cache-Control"] = "private, max-age=86400"
    return response


api = NinjaAPI(
    title="Ops Portal API",
    version="1",
    auth=[TokenAuth(), django_auth],
    # validatorUrl None: no "valid" badge fetched from validator.swagger.io with our URL.
    docs=LocalSwagger(settings={"validatorUrl": None}),
    docs_url="/docs",
    docs_decorator=docs_login_required,
    urls_namespace="api",
)


@api.exception_handler(PermissionError)
def _forbidden(request, exc):
    return api.create_response(request, {"error": "permission", "message": str(exc)}, status=403)


def register_routers() -> None:
    from incidents.api import AgentRefused
    from incidents.api import router as agents_router
    from pra.api import router as pra_router

    @api.exception_handler(AgentRefused)
    def _agent_refused(request, exc):
        return api.create_response(
            request, {"error": "refused", "message": exc.message}, status=exc.status
        )

    api.add_router("/pra/", pra_router)
    api.add_router("/agents/", agents_router)


register_routers()

__all__ = ["api"]
