"""The permission matrix's declared policy and its route walk (used by
``test_permission_matrix``): the identities, what each may do on each route
(``MODEL_POLICY`` for the standard pages of each registered model, ``POLICY`` for
everything else), and every route the portal serves, collected from Django's URL
resolver, the OpenAPI schema, the ASGI app's ``/mcp`` endpoint and the websocket
routes. Declared once here; the tests judge every request against it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver

from portal.consumers import SUBJECTS
from portal.mcp.http import MCP_PATH
from portal.routing import websocket_urlpatterns

# --- identities ----------------------------------------------------------------------

SESSION_ROLES = ("viewer", "operator", "approver", "admin")
IDENTITIES = (
    "anonymous",
    "nobody",  # logged in, no role (not staff)
    *SESSION_ROLES,
    "api_token",  # a viewer's REST API token
    "mcp_token",  # an admin's MCP-scope token
    "revoked_token",  # an admin's REST API token, revoked
)

# What an identity counts as on each surface: tokens work only where their scope does.
ANON, NOROLE, MCP = "anonymous", "nobody", "mcp"
VR, OP, AP, AD = SESSION_ROLES


def effective_role(identity: str, surface: str) -> str:
    if identity in SESSION_ROLES or identity == NOROLE:
        return identity if surface != "mcp" else ANON
    if identity == "api_token":
        return VR if surface == "api" else ANON
    if identity == "mcp_token":
        return MCP if surface == "mcp" else ANON
    return ANON


EVERYONE = frozenset({ANON, NOROLE, VR, OP, AP, AD, MCP})
STAFF = frozenset({VR, OP, AP, AD})  # every role is staff: the admin is the main UI
VIEW = STAFF  # portal.view_portal and view_* of the portal's models
OPERATE = frozenset({OP, AD})  # propose, diagnose, execute, back up, plan restores
APPROVE = frozenset({AP, AD})
ACK = frozenset({OP, AP, AD})  # acknowledge and resolve incidents
ADMIN = frozenset({AD})
NONE: frozenset[str] = frozenset()

# --- policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    allow: dict[str, frozenset[str]]  # method -> effective roles allowed
    why: str = ""
    refusal_404: bool = False  # Django answers 404 here where it could not say 403
    ok_5xx: frozenset[int] = frozenset()  # e.g. /health's 503 when no worker is alive


def rule(get=NONE, post=NONE, why="", refusal_404=False, ok_5xx=(), **methods) -> Rule:
    allow = {"GET": frozenset(get), "POST": frozenset(post)}
    allow.update({m.upper(): frozenset(r) for m, r in methods.items()})
    return Rule(allow, why, refusal_404, frozenset(ok_5xx))


@dataclass(frozen=True)
class ModelPolicy:
    """Who may use each standard admin page of a registered model."""

    view: frozenset[str]
    add: frozenset[str] = NONE
    change: frozenset[str] = NONE
    delete: frozenset[str] = NONE


MODEL_POLICY = {
    "auth.group": ModelPolicy(ADMIN),  # the roles: declared in code, read-only here
    "auth.user": ModelPolicy(ADMIN, ADMIN, ADMIN),  # deactivated, never deleted
    "portal.auditevent": ModelPolicy(VIEW),
    "portal.apitoken": ModelPolicy(VIEW),
    "portal.approvalrule": ModelPolicy(VIEW, change=ADMIN),
    "portal.notificationchannel": ModelPolicy(VIEW, ADMIN, ADMIN, ADMIN),
    "portal.escalationlevel": ModelPolicy(VIEW, ADMIN, ADMIN),
    "portal.notification": ModelPolicy(VIEW),
    "pra.host": ModelPolicy(VIEW, change=ADMIN),
    "pra.praaction": ModelPolicy(VIEW, add=OPERATE),
    "pra.diagnosticrun": ModelPolicy(VIEW),
    "pra.maintenancewindow": ModelPolicy(VIEW, ADMIN, ADMIN, ADMIN),
    "pra.changefreeze": ModelPolicy(VIEW, ADMIN, ADMIN, ADMIN),
    "pra.windowopening": ModelPolicy(VIEW),
    "incidents.agent": ModelPolicy(VIEW, change=ADMIN),
    "incidents.detectionrule": ModelPolicy(VIEW, ADMIN, ADMIN),
    "incidents.opspolicy": ModelPolicy(VIEW, change=ADMIN),
    "incidents.autopatchattempt": ModelPolicy(VIEW),
    "incidents.decision": ModelPolicy(VIEW),
    "incidents.agentcommand": ModelPolicy(VIEW),
    "incidents.groupingrule": ModelPolicy(VIEW, ADMIN, ADMIN),
    "incidents.incidentgroup": ModelPolicy(VIEW),
    "backups.backupdrill": ModelPolicy(VIEW),
    "incidents.incident": ModelPolicy(VIEW),
    "backups.backupsource": ModelPolicy(VIEW, ADMIN, ADMIN),
    "backups.backuprun": ModelPolicy(VIEW),
    "backups.restorerequest": ModelPolicy(VIEW),
    "backups.restoretarget": ModelPolicy(VIEW, ADMIN, ADMIN),  # disabled, never deleted
}
# django_rq's pseudo-model: its pages are declared one by one below (admin role only).
NOT_STANDARD = {"django_rq.dashboard"}


def model_rules(label: str, policy: ModelPolicy) -> dict[str, Rule]:
    app, model = label.split(".")
    base = f"admin/{app}/{model}/"
    see = policy.view | policy.change
    return {
        # POST on a list runs admin actions; each action checks its own permission.
        base: rule(policy.view, policy.view, "list"),
        f"{base}add/": rule(policy.add, policy.add, "add form"),
        f"{base}<path:object_id>/change/": rule(see, policy.change, "change form"),
        f"{base}<path:object_id>/delete/": rule(policy.delete, policy.delete, "delete"),
        f"{base}<path:object_id>/history/": rule(see, see, "history"),
        # A bare redirect to the change page (which checks), for any staff user.
        f"{base}<path:object_id>/": rule(STAFF, STAFF, "redirect to the change page"),
    }


RQ = "admin/django_rq/dashboard/"
RQ_PAGES = (
    "", "queues/<int:queue_index>/", "queues/<int:queue_index>/details/",
    "queues/<int:queue_index>/finished/", "queues/<int:queue_index>/failed/",
    "queues/<int:queue_index>/failed/clear/", "queues/<int:queue_index>/scheduled/",
    "queues/<int:queue_index>/started/", "queues/<int:queue_index>/deferred/",
    "queues/<int:queue_index>/empty/", "queues/<int:queue_index>/requeue-all/",
    "queues/<int:queue_index>/<str:job_id>/",
    "queues/<int:queue_index>/<str:job_id>/results/<str:result_id>/",
    "queues/<int:queue_index>/<str:job_id>/delete/",
    "queues/<int:queue_index>/<str:job_id>/requeue/",
    "queues/<int:queue_index>/<str:job_id>/enqueue/",
    "queues/<int:queue_index>/<str:job_id>/stop/",
    "queues/confirm-action/<int:queue_index>/", "queues/actions/<int:queue_index>/",
    "workers/<int:queue_index>/", "workers/<int:queue_index>/<str:key>/",
    "cron-schedulers/<int:connection_index>/<str:scheduler_name>/",
    "cron-schedulers/<int:connection_index>/<str:scheduler_name>/jobs/<path:cron_job_name>/",
    r"^stats.json/?$", r"^stats.json/(?P<token>[\w]+)?/?$", r"^metrics/?$",
)  # fmt: skip


def _walk(patterns, prefix="") -> list[tuple[str, object]]:
    found = []
    for p in patterns:
        if isinstance(p, URLResolver):
            found += _walk(p.url_patterns, prefix + str(p.pattern))
        else:
            assert isinstance(p, URLPattern)
            found.append((prefix + str(p.pattern), p.callback))
    return found


# Who may open each app's index page (Django lists the labels in registry order).
APP_INDEX = {"auth": ADMIN, "django_rq": ADMIN, "portal": VIEW, "pra": VIEW,
             "incidents": VIEW, "backups": VIEW}  # fmt: skip


def _app_index_route() -> tuple[str, tuple[str, ...]]:
    """The admin's app index route and the app labels its regex accepts."""
    for key, _ in _walk(get_resolver().url_patterns):
        found = re.fullmatch(r"admin/\^\(\?P<app_label>([\w|]+)\)/\$", key)
        if found:
            return key, tuple(found[1].split("|"))
    raise AssertionError("no app index route in the admin site")


POLICY: dict[str, Rule] = {
    # Portal pages
    "": rule(VIEW, VIEW, "dashboard"),
    "health": rule(EVERYONE, NONE, "load balancers; GET only", ok_5xx={503}),
    # METRICS_ALLOWED_IPS is emptied below: without the metrics token nobody gets in.
    "metrics": rule(NONE, NONE, "bearer METRICS_TOKEN only"),
    "admin/queues/": rule(VIEW, NONE, "read-only queue depths"),
    "charts/": rule(VIEW, NONE, "charts; GET only"),
    # The admin site itself
    "admin/": rule(STAFF, STAFF, "admin index"),
    "admin/login/": rule(EVERYONE, EVERYONE, "login form"),
    "admin/logout/": rule(NONE, EVERYONE, "POST logs out whoever asks"),
    "admin/password_change/": rule(STAFF, STAFF, "own password"),
    "admin/password_change/done/": rule(STAFF, STAFF),
    "admin/autocomplete/#host": rule(VIEW, VIEW, "hosts, for the propose form"),
    "admin/autocomplete/#user": rule(ADMIN, ADMIN, "users: admin only"),
    "admin/jsi18n/": rule(STAFF, STAFF),
    "admin/r/<path:content_type_id>/<path:object_id>/": rule(STAFF, STAFF, "view on site"),
    **{
        f"{_app_index_route()[0]}#{label}": rule(roles, roles, "app index", refusal_404=True)
        for label, roles in APP_INDEX.items()
    },
    "admin/(?P<url>.*)$": rule(NONE, NONE, "catch-all: 404", refusal_404=True),
    # Custom admin views of the apps
    "admin/pra/host/<int:pk>/diagnose/": rule(NONE, OPERATE, "run a diagnostic"),
    "admin/pra/praaction/<int:pk>/approve/": rule(NONE, APPROVE),
    "admin/pra/praaction/<int:pk>/reject/": rule(NONE, APPROVE),
    "admin/pra/praaction/<int:pk>/preflight/": rule(NONE, ACK, "re-run the pre-flight"),
    "admin/incidents/incident/<int:pk>/act/<str:verb>/#acknowledge": rule(NONE, ACK),
    "admin/incidents/incident/<int:pk>/act/<str:verb>/#resolve": rule(NONE, ACK),
    # The world has no auto-patch attempt: the view answers 404 for it before any check.
    "admin/incidents/incident/<int:pk>/act/<str:verb>/#approve-patch": rule(
        NONE, APPROVE, refusal_404=True
    ),
    "admin/incidents/incident/<int:pk>/act/<str:verb>/#reject-patch": rule(
        NONE, APPROVE, refusal_404=True
    ),
    "admin/incidents/incident/<int:pk>/act/<str:verb>/#command": rule(NONE, APPROVE),
    # The world has no storm: the view answers 404 for it before any check.
    "admin/incidents/incidentgroup/<int:pk>/act/<str:verb>/#acknowledge": rule(
        NONE, ACK, refusal_404=True
    ),
    "admin/incidents/incidentgroup/<int:pk>/act/<str:verb>/#resolve": rule(
        NONE, ACK, refusal_404=True
    ),
    "admin/incidents/incidentgroup/<int:pk>/act/<str:verb>/#bogus": rule(
        NONE, NONE, refusal_404=True
    ),
    "admin/backups/backuprun/<int:run_id>/accept/": rule(
        APPROVE, APPROVE, "accept a suspiciously small backup"
    ),
    "admin/incidents/incident/<int:pk>/act/<str:verb>/#bogus": rule(NONE, NONE),
    "admin/backups/restorerequest/plan/": rule(OPERATE, OPERATE, "plan a restore"),
    "admin/backups/backupsource/dr-report/": rule(VIEW, NONE, "DR report: read-only, GET"),
    "admin/backups/restorerequest/<int:pk>/approve/": rule(NONE, APPROVE),
    "admin/backups/restorerequest/<int:pk>/reject/": rule(NONE, APPROVE),
    # django_rq: job arguments, tracebacks and queue surgery are the admin role's alone.
    **{RQ + page: rule(ADMIN, ADMIN, "django_rq") for page in RQ_PAGES},
    # The API (its documentation too; the methods come from the OpenAPI schema)
    "api/": rule(NONE, NONE, "ninja's root: always 404", refusal_404=True),
    "api/openapi.json": rule(VIEW, NONE),
    "api/docs": rule(VIEW, NONE),
    "api/docs/assets/<str:name>": rule(VIEW, NONE, "Swagger UI files"),
    "api/pra/catalog": rule(VIEW),
    "api/pra/hosts": rule(VIEW),
    "api/pra/actions": rule(VIEW, OPERATE),
    "api/pra/actions/<action_id>": rule(VIEW),
    "api/pra/actions/<action_id>/approve": rule(post=APPROVE),
    "api/pra/actions/<action_id>/reject": rule(post=APPROVE),
    "api/pra/actions/<action_id>/execute": rule(post=OPERATE),
    "api/pra/diagnostics": rule(VIEW),
    "api/pra/hosts/<host>/diagnostics": rule(post=OPERATE),
    "api/pra/hosts/<host>/maintenance-outlook": rule(VIEW),
    # Agents sign their requests with their own secret: no user or token gets in.
    "api/agents/heartbeat": rule(post=NONE, why="agent signature"),
    "api/agents/commands/<command_id>/ack": rule(post=NONE, why="agent signature"),
    "api/agents/commands/<command_id>/fail": rule(post=NONE, why="agent signature"),
    # MCP: a bearer token of scope mcp, nothing else (stateless: POST only).
    MCP_PATH: rule({MCP}, {MCP}, delete=NONE, why="GET: the server's event stream"),
    # Websockets: the dashboard, and one object's page for the subjects published.
    "^ws/live/$": rule(VIEW),
    **{
        f"{websocket_urlpatterns[1].pattern}#{subject}": rule(VIEW if subject in SUBJECTS else NONE)
        for subject in (*SUBJECTS, "auth.user", "missing")
    },
}
for _label, _policy in MODEL_POLICY.items():
    POLICY.update(model_rules(_label, _policy))

# --- routes ----------------------------------------------------------------------------


@dataclass
class Route:
    key: str  # the route as Django (or the ASGI app) spells it
    surface: str  # "django", "api", "mcp" or "ws"
    methods: tuple[str, ...]
    variants: tuple[str, ...] = ("",)

    def rule_keys(self) -> list[str]:
        return [f"{self.key}#{v}" if v else self.key for v in self.variants]


def _api_methods() -> dict[str, tuple[str, ...]]:
    """Methods per path, from the OpenAPI schema, keyed as the resolver spells the path."""
    from portal.api import api

    methods = {}
    for path, operations in api.get_openapi_schema()["paths"].items():
        key = re.sub(r"\{(\w+)\}", r"<\1>", path.lstrip("/"))
        methods[key] = tuple(sorted(m.upper() for m in operations))
    return methods


VARIANTS = {
    _app_index_route()[0]: _app_index_route()[1],
    "admin/incidents/incident/<int:pk>/act/<str:verb>/": (
        "acknowledge", "resolve", "approve-patch", "reject-patch", "command", "bogus",
    ),
    "admin/incidents/incidentgroup/<int:pk>/act/<str:verb>/": ("acknowledge", "resolve", "bogus"),
    "admin/autocomplete/": ("host", "user"),
    str(websocket_urlpatterns[1].pattern): (*SUBJECTS, "auth.user", "missing"),
}  # fmt: skip


def collect_routes() -> list[Route]:
    api_methods = _api_methods()
    routes, seen = [], set()
    for key, callback in _walk(get_resolver().url_patterns):
        if key in seen:  # ninja lists a path once per operation
            continue
        seen.add(key)
        if getattr(callback, "__module__", "") == "ninja.operation":
            assert key in api_methods, f"{key} is routed but not in the OpenAPI schema"
            routes.append(Route(key, "api", api_methods.pop(key)))
        else:
            surface = "api" if key.startswith("api/") else "django"
            routes.append(Route(key, surface, ("GET", "POST"), VARIANTS.get(key, ("",))))
    assert not api_methods, f"in the OpenAPI schema but not routed: {sorted(api_methods)}"
    routes.append(Route(MCP_PATH, "mcp", ("GET", "POST", "DELETE")))
    for p in websocket_urlpatterns:
        key = str(p.pattern)
        routes.append(Route(key, "ws", ("GET",), VARIANTS.get(key, ("",))))
    return routes
