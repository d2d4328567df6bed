"""The JSON API (django-ninja): session or bearer-token auth, JSON errors, OpenAPI at /api/docs."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import NinjaAPI
from ninja.security import HttpBearer, django_auth

from portal.tokens import authenticate_token


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        user = authenticate_token(token, scope="api")
        if user is not None:
            request.user = user
        return user


api = NinjaAPI(
    title="Ops Portal API",
    version="1",
    auth=[TokenAuth(), django_auth],
    docs_url="/docs",
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
