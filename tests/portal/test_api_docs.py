"""The OpenAPI schema and the Swagger UI: behind login, and served by the portal alone."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.urls import reverse

from portal.models import ApiToken
from portal.tokens import create_token, revoke_token

pytestmark = pytest.mark.django_db

DOCS, SCHEMA = "/api/docs", "/api/openapi.json"


class _Refs(HTMLParser):
    """Every URL the page makes a browser fetch or follow (src, href, and the like)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in {"src", "href", "action", "data", "poster", "srcset"} and value:
                self.urls.append(value)


def _refs(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    return parser.urls


def test_anonymous_users_get_neither_the_schema_nor_the_docs(client):
    response = client.get(SCHEMA)
    assert response.status_code == 401
    assert "paths" not in response.content.decode()
    response = client.get(DOCS)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    response = client.get(reverse("api_docs_asset", args=["swagger-ui-bundle.js"]))
    assert response.status_code == 302


def test_a_user_without_a_role_is_refused(client, nobody):
    client.force_login(nobody)
    assert client.get(SCHEMA).status_code == 403
    assert client.get(DOCS).status_code == 403


@pytest.mark.parametrize("role", ["viewer", "operator", "approver", "admin_user"])
def test_every_role_reads_the_schema_and_the_docs(request, client, role):
    client.force_login(request.getfixturevalue(role))
    schema = client.get(SCHEMA)
    assert schema.status_code == 200
    assert "/api/pra/actions" in schema.json()["paths"]
    assert client.get(DOCS).status_code == 200


def test_an_api_token_reads_the_schema_but_mcp_and_revoked_tokens_do_not(client, viewer):
    _, api_raw = create_token(viewer, "schema tool")
    _, mcp_raw = create_token(viewer, "assistant", scope=ApiToken.Scope.MCP)
    revoked, revoked_raw = create_token(viewer, "old")
    revoke_token(revoked, by="system:test")
    assert client.get(SCHEMA, HTTP_AUTHORIZATION=f"Bearer {api_raw}").status_code == 200
    for raw in (mcp_raw, revoked_raw, "opp_not-a-token"):
        assert client.get(SCHEMA, HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401


def test_the_docs_page_loads_everything_from_the_portal(client, viewer):
    """No CDN: every URL in the page is a path on this host, and each one answers."""
    client.force_login(viewer)
    html = client.get(DOCS).content.decode()
    refs = _refs(html)
    assert len(refs) >= 3, refs  # stylesheet, icon, two scripts
    for url in refs:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        assert url.startswith("/"), url
    # Nor any absolute or protocol-relative URL anywhere else in the page (inline JSON).
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), html
    settings_json = re.search(
        r'<script type="application/json" id="swagger-settings">(.*?)</script>', html, re.S
    )
    swagger_settings = json.loads(settings_json.group(1))
    assert swagger_settings["url"] == SCHEMA
    # Swagger UI's default validator badge would send the schema URL to validator.swagger.io.
    assert swagger_settings["validatorUrl"] is None
    scripts = [u for u in refs if u.endswith(".js")]
    assert len(scripts) == 2
    for url in refs:
        response = client.get(url)
        assert response.status_code == 200, url
        body = b"".join(response.streaming_content)
        assert body, url
        if url.endswith("swagger-ui-bundle.js"):
            assert len(body) > 100_000 and b"SwaggerUIBundle" in body


def test_only_the_docs_files_are_served(client, viewer):
    client.force_login(viewer)
    for name in ("swagger.html", "redoc.standalone.js.map", "..", "__init__.py", "settings.py"):
        assert client.get(f"/api/docs/assets/{name}").status_code == 404, name
    assert client.post(reverse("api_docs_asset", args=["swagger-ui.css"])).status_code == 405
