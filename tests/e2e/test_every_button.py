"""Every button on every admin page, for every role: it changes what it names, nothing else.

For each role (viewer, operator, approver, admin) the test signs in once (one browser,
one context per role), visits the dashboard, the charts and the admin index, every
changelist the index links, each changelist's add and tool pages, the change page of
its first object, and then the pages about one object that rows and change pages link
(a shrunken backup's accept page, delete confirmations last: a confirmed delete may
change exactly its cascade, as Django's deletion collector reads it beforehand, and
must remove the object). On each page it presses every button in the page's content and
so submits every form that posts (browser-side validation off, required inputs of the
portal's own forms filled with a harmless text, so the server decides; admin model
forms go unchanged), one at a time from a fresh load; GET forms (search boxes) only
load pages, and every load is checked the same way. The header's theme toggle and log
out are pressed once per role. Before and after each press (and each page load) it
snapshots every row of every table (one query: a count and a digest per table); the
tables that may change are declared per button (``ALLOWED``), everything else must stay
the same, to the column. A viewer changes nothing at all. No page may
ask any host but the portal for anything.

Real: Chromium, daphne, PostgreSQL, Redis, the loopback sshd target (diagnostics run for
real). The RQ worker is paused for the run (jobs a button enqueues wait in Redis and are
dropped at the end), so no job changes rows between two snapshots behind a button's back.
The world is the demo's kinds of rows (``tests.portal.dashboard_world``: hosts,
remediations waiting for signatures, incidents, a patch waiting for approval, backup
sources, runs, a restore request, restore drills), not ``make run``'s seed itself, which
needs the demo's own processes.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.db import connection
from django.db.models.deletion import Collector
from django.test import Client
from django.utils import timezone
from playwright.sync_api import BrowserContext, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from backups.models import BackupRun
from portal import actions as portal_actions
from portal.lib.redis import get_redis
from pra import windows
from tests.e2e.conftest import in_thread
from tests.factories import propose
from tests.portal import dashboard_world as world

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

STYLING = re.compile(r"\.(css|png|svg|gif|ico|woff2?)(\?.*)?$")
SCRIPTS = re.compile(r"/static/.*\.js(\?.*)?$")
ROLES = ("viewer", "operator", "approver", "admin_user")
FILLER = "e2e check: nothing else changes"
# A press may run real work before its page comes back (a diagnostic over SSH on the
# loopback target): generous, so a loaded machine reports slowness, not a broken button.
PRESS_TIMEOUT_MS = 60_000
SHOTS = django_settings.BASE_DIR / "var" / "screenshots"
# Rows nobody's button writes and the test cannot hold still: sessions (logging in),
# permissions and content types (Django's own), users' last_login.
SKIP_MODELS = {"sessions.session", "auth.permission", "contenttypes.contenttype"}
SKIP_COLUMNS = {"last_login"}

TRAIL = {"portal.auditevent", "portal.auditanchor", "portal.notification", "admin.logentry"}
INCIDENT = {"incidents.incident", "incidents.incidentevent", "incidents.incidentgroup"}
# (pattern on "<form action path> <button id or words>", tables that button may change)
ALLOWED: list[tuple[str, set[str]]] = [
    (r"/admin/pra/praaction/\d+/approve/ ", {"pra.praaction", "portal.approval", *TRAIL}),
    (r"/admin/pra/praaction/\d+/reject/ ", {"pra.praaction", *INCIDENT, *TRAIL}),
    (r"/admin/pra/praaction/\d+/preflight/ ", {"pra.praaction", *TRAIL}),
    (r"/admin/backups/restorerequest/\d+/approve/ ",
     {"backups.restorerequest", "portal.approval", *TRAIL}),
    (r"/admin/backups/restorerequest/\d+/reject/ ", {"backups.restorerequest", *TRAIL}),
    # A rejected (or fully signed) patch settles its decision's outcome too.
    (r"/admin/incidents/incident/\d+/act/(approve|reject)-patch/ ",
     {"incidents.autopatchattempt", "incidents.decision", "portal.approval", *INCIDENT,
      *TRAIL}),
    (r"/admin/incidents/incident/\d+/act/(acknowledge|resolve)/ ", {*INCIDENT, *TRAIL}),
    (r"/admin/incidents/incident/\d+/act/command/ ", {"incidents.agentcommand", *TRAIL}),
    (r"/admin/incidents/incidentgroup/\d+/act/", {*INCIDENT, *TRAIL}),
    (r"/admin/pra/host/\d+/diagnose/ ", {"pra.diagnosticrun", *TRAIL}),
    (r"/admin/backups/backuprun/\d+/accept/ ", {"backups.backuprun", *TRAIL}),
    (r"/admin/backups/restorerequest/plan/ ", {"backups.restorerequest", *TRAIL}),
    # "Save" on a change page: that object (an unchanged form keeps its values: the
    # snapshot ignores only auto_now columns) and the trail.
    (r"/admin/(\w+)/(\w+)/(\d+/change/|add/)? (_save|_continue|_addanother)",
     {"<model>", *TRAIL}),
]  # fmt: skip


# A page about one object besides its change form, linked from its row or its change
# page: the delete confirmation, the acceptance of a shrunken backup, and so on.
OBJECT_PAGE = re.compile(r"^/admin/\w+/\w+/\d+/(?!change/|history/)[\w-]+/$")
DELETE = re.compile(r"/admin/(\w+)/(\w+)/(\d+)/delete/ ")


def _key(action: str, ident: str) -> str:
    return f"{urlsplit(action).path} {ident}"


def allowed_for(key: str) -> set[str]:
    """The tables the button behind ``key`` may change; read before the press (a delete's
    cascade is read from the object it is about to remove)."""
    match = DELETE.match(key)
    if match:
        return _cascade(*match.groups()) | TRAIL
    for pattern, tables in ALLOWED:
        match = re.match(pattern, key)
        if match:
            if "<model>" in tables:
                return (tables - {"<model>"}) | {f"{match[1]}.{match[2]}"}
            return tables
    return set()


def _cascade(app_label: str, model_name: str, pk: str) -> set[str]:
    """What deleting that object removes or updates: Django's deletion collector (what the
    admin's confirmation page lists), as the tables of the concrete models."""
    model = apps.get_model(app_label, model_name)
    obj = model._default_manager.filter(pk=pk).first()
    if obj is None:
        return set()
    collector = Collector(using="default", origin=obj)
    collector.collect([obj])
    models = {*collector.data, *(qs.model for qs in collector.fast_deletes)}
    models |= {field.model for field, _value in collector.field_updates}
    return {(m._meta.concrete_model or m)._meta.label_lower for m in models}


def _exists(app_label: str, model_name: str, pk: str) -> bool:
    return apps.get_model(app_label, model_name)._default_manager.filter(pk=pk).exists()


def _snapshot_sql() -> str:
    """One statement: per table, its row count and a digest of all its rows (every column
    but the skipped ones), so a snapshot is one round trip however many tables."""
    quote = connection.ops.quote_name
    parts = []
    for model in apps.get_models():
        label = model._meta.label_lower
        if label in SKIP_MODELS or model._meta.proxy or not model._meta.managed:
            continue
        columns = ", ".join(
            quote(f.column)
            for f in model._meta.concrete_fields
            if f.attname not in SKIP_COLUMNS and not getattr(f, "auto_now", False)
        )
        # Identifiers from the model registry, quoted: no input reaches this text.
        rows = f"string_agg(row({columns})::text, '|' ORDER BY {quote(model._meta.pk.column)})"
        table = quote(model._meta.db_table)
        parts.append(f"SELECT '{label}', count(*), md5(coalesce({rows}, '')) FROM {table}")  # noqa: S608
    return " UNION ALL ".join(parts)


def snapshot() -> dict[str, tuple]:
    """Every table (less the skipped ones): its row count and the digest of its rows."""
    with connection.cursor() as cursor:
        cursor.execute(_snapshot_sql())
        return {label: (count, digest) for label, count, digest in cursor.fetchall()}


def changed(before: dict, after: dict) -> set[str]:
    return {label for label in before if before[label] != after.get(label)}


@dataclass
class Crawl:
    role: str
    context: BrowserContext
    page: Page
    base_url: str
    seen: list[str] = field(default_factory=list)
    pressed: int = 0
    loaded: int = 0
    problems: list[str] = field(default_factory=list)
    last: dict = field(default_factory=dict)  # the newest snapshot
    keys: list[str] = field(default_factory=list)  # what was pressed, in order


def _signed_in(browser, base_url: str, user) -> BrowserContext:
    """A context signed in as ``user`` (a session made in the database, as open_page does)."""
    context = browser.new_context(base_url=base_url)
    context.set_default_timeout(PRESS_TIMEOUT_MS)
    client = Client()
    client.force_login(user)
    session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    context.add_cookies(
        [{"name": django_settings.SESSION_COOKIE_NAME, "value": session, "url": base_url}]
    )
    return context


# What a press looks like from inside the page: every button in the content (the header's
# log out and theme toggle are pressed once per role, on the index).
# The buttons of a page: everything outside the header (``scope`` "content"), or the
# header's own (log out, theme toggle: pressed once per role, on the index).
_FIND = """
  const all = Array.from(document.querySelectorAll(
    'button, input[type=submit], input[type=button], input[type=image]'));
  const inHeader = (el) => !!el.closest('#header, header.top');
  const found = all.filter((el) => scope === 'header' ? inHeader(el) : !inHeader(el));
"""
BUTTONS_JS = (
    """(scope) => {"""
    + _FIND
    + """
  return found.map((el, i) => {
    const form = el.form;
    const ident = el.id || el.name || (el.textContent || el.value || '').trim().slice(0, 40);
    // Not form.action: a form with a field named "action" (the changelist's action
    // menu) shadows it with that element.
    const target = form && (el.getAttribute('formaction') || form.getAttribute('action') || '');
    return {i, ident, action: form ? new URL(target, location.href).href : '',
            submit: !!form && (el.type === 'submit' || el.type === 'image'),
            get: !!form && form.method === 'get'};
  });
}"""
)

PREPARE_JS = (
    """([scope, i, filler]) => {"""
    + _FIND
    + """
  const el = found[i];
  if (!el) return false;
  for (let d = el.closest('details'); d; d = d.parentElement.closest('details')) d.open = true;
  const form = el.form;
  if (form) {
    form.noValidate = true;  // the server decides, not the browser
    // Admin model forms go as they are (an unchanged Save); the portal's own forms get
    // their required words (a reason, a confirmation) so the server sees a real request.
    const admin = form.querySelector('[name=_save], [name=index]') || form.id.endsWith('_form');
    if (!admin) {
      form.querySelectorAll('input[required], textarea[required]').forEach((input) => {
        if (!input.value && input.type !== 'hidden') input.value = filler;
      });
    }
  }
  el.scrollIntoView();
  el.setAttribute('data-e2e-press', '1');
  return true;
}"""
)


def _load(crawl: Crawl, url: str) -> bool:
    """Open ``url``; a page that may not be seen (403/404) still must change nothing."""
    before = crawl.last or snapshot()
    response = crawl.page.goto(url, wait_until="domcontentloaded")
    crawl.last = snapshot()
    crawl.loaded += 1
    if changed(before, crawl.last):
        moved = sorted(changed(before, crawl.last))
        crawl.problems.append(f"{crawl.role}: opening {url} changed {moved}")
    return response is not None and response.status == 200


def _buttons(crawl: Crawl, url: str, scope: str) -> dict[str, dict]:
    found = crawl.page.evaluate(BUTTONS_JS, scope)
    return {_key(b["action"] or url, b["ident"]): b for b in reversed(found)}


def _press_all(crawl: Crawl, url: str, scope: str = "content") -> list[str]:
    """Press every button of ``url``; returns the page's links to its object's other
    pages (``OBJECT_PAGE``), for the crawl to visit after the rest."""
    if not _load(crawl, url):
        return []
    object_pages = [h for h in _links(crawl.page, "#content a") if OBJECT_PAGE.match(h)]
    # GET forms (search boxes, filters) only load pages, which ``_load`` checks: pressed
    # are the buttons that post or run the page's scripts.
    keys = [key for key, b in _buttons(crawl, url, scope).items() if not b["get"]]
    fresh = True
    for key in keys:
        # A press that came back (POST, redirect) to this very page by a GET left it as a
        # fresh load would: no second load needed.
        if not fresh and not _load(crawl, url):
            return object_pages
        fresh = False
        # Found again by what it is: an earlier press may have removed or moved buttons
        # (an item signed from the inbox leaves it).
        # The page's "load", not only its DOM: admin widgets (the many-to-many selector)
        # rebuild the form then, and a click racing that layout shift hit nothing (two
        # one-off 60 s stalls: no POST ever reached daphne).
        crawl.page.wait_for_load_state("load")
        button = _buttons(crawl, url, scope).get(key)
        if button is None or not crawl.page.evaluate(PREPARE_JS, [scope, button["i"], FILLER]):
            continue
        target = crawl.page.locator("[data-e2e-press]")
        if not target.is_visible() or not target.is_enabled():
            continue  # a form the page's script removed, a widget's disabled "Remove all"
        before = crawl.last
        allowed = set() if crawl.role == "viewer" else allowed_for(key)
        try:
            if button["submit"]:
                with crawl.page.expect_navigation(wait_until="domcontentloaded") as nav:
                    target.click()
                landed = nav.value
                fresh = (
                    landed is not None
                    and landed.request.method == "GET"
                    and landed.url == crawl.base_url + url
                    and landed.status == 200
                )
            else:
                target.click()
                crawl.page.wait_for_load_state("domcontentloaded")
        except PlaywrightTimeout as exc:
            # What timed out (the click's wait for the button, or the page after it) and
            # where the browser is, with a screenshot: a stall must be diagnosable.
            shot = SHOTS / f"stall-{crawl.role}-{crawl.pressed}.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            crawl.page.screenshot(path=str(shot), full_page=True)
            crawl.problems.append(
                f"{crawl.role}: on {url} pressing {key!r}: no page within "
                f"{PRESS_TIMEOUT_MS // 1000} s ({str(exc).splitlines()[0]}; the browser "
                f"is at {crawl.page.url}; screenshot {shot})"
            )
            fresh = False
        after = crawl.last = snapshot()
        crawl.pressed += 1
        crawl.keys.append(key)
        moved = changed(before, after)
        deleted = DELETE.match(key)
        if deleted and _exists(*deleted.groups()):
            crawl.problems.append(f"{crawl.role}: on {url} {key!r} left the object in place")
        if moved - allowed:
            crawl.problems.append(
                f"{crawl.role}: on {url} pressing {key!r} changed {sorted(moved - allowed)}"
                f" (allowed: {sorted(allowed) or 'nothing'})"
            )
    return object_pages


def _cached(route, cache: dict) -> None:
    url = route.request.url
    if url not in cache:
        response = route.fetch()
        cache[url] = (response.status, response.headers, response.body())
    status, headers, body = cache[url]
    route.fulfill(status=status, headers=headers, body=body)


def _links(page: Page, selector: str) -> list[str]:
    hrefs = page.eval_on_selector_all(selector, "els => els.map(e => e.getAttribute('href'))")
    return [h for h in hrefs if h and h.startswith("/admin/") and "?" not in h]


def _pages(crawl: Crawl) -> list[str]:
    """The index's changelists, and from each its add/tool pages and first object."""
    crawl.page.goto("/admin/", wait_until="domcontentloaded")
    lists = list(dict.fromkeys(_links(crawl.page, "#content a")))
    found: list[str] = []
    for changelist in lists:
        found.append(changelist)
        response = crawl.page.goto(changelist, wait_until="domcontentloaded")
        if response is None or response.status != 200:
            continue
        found += _links(crawl.page, ".object-tools a")
        found += [h for h in _links(crawl.page, "#result_list a") if OBJECT_PAGE.match(h)][:2]
        found += _links(crawl.page, "#result_list tbody tr:first-child th a")[:1]
    return list(dict.fromkeys(u for u in found if "/history/" not in u))


def _world(stack, operator, approver, admin_user) -> int:
    world.build(1, operator=operator, tag="w")
    world.history(operator, days=2, tag="h")
    stack.target.add_container("web")
    propose(operator, stack.host, "restart_container", {"name": "web"})
    # A verified backup much smaller than the one before: it waits on its accept page.
    _, (shrunk,) = world.backup_source("w-shrunk", runs=1)
    BackupRun.objects.filter(pk=shrunk.pk).update(shrink_flag=True)
    # Configuration an administrator may delete (most records may not be deleted at all).
    windows.save_window(
        None,
        by=admin_user,
        name="sunday-night",
        weekday=6,
        start_time=dt.time(2, 0),
        duration_minutes=120,
        timezone="UTC",
    )
    soon = timezone.now() + dt.timedelta(days=10)
    windows.save_freeze(
        None,
        by=admin_user,
        reason="year-end change freeze",
        starts_at=soon,
        ends_at=soon + dt.timedelta(days=2),
    )
    portal_actions.create_channel(
        by=admin_user,
        name="ops-hook",
        kind="WEBHOOK",
        url="",
        url_env="OPS_HOOK_URL",
        recipients="",
        min_severity="info",
        enabled=True,
    )
    return shrunk.pk


def test_every_button_changes_only_what_it_names(
    stack, browser, viewer, operator, approver, admin_user
):
    shrunk = in_thread(_world, stack, operator, approver, admin_user)
    users = {"viewer": viewer, "operator": operator, "approver": approver,
             "admin_user": admin_user}  # fmt: skip
    portal = urlsplit(stack.base_url).netloc
    report: list[str] = []
    scripts: dict[str, tuple[int, dict, bytes]] = {}
    with stack.worker_paused():
        try:
            for role in ROLES:
                started = time.monotonic()
                context = _signed_in(browser, stack.base_url, users[role])
                # Styles, images and fonts are not fetched, scripts are fetched once per
                # run (every page would ask daphne for them again): buttons work the same.
                context.route(STYLING, lambda route: route.abort())
                context.route(SCRIPTS, lambda route: _cached(route, scripts))
                page = context.new_page()
                page.on("dialog", lambda dialog: dialog.accept())
                crawl = Crawl(role, context, page, stack.base_url)
                page.on("request", lambda request, c=crawl: c.seen.append(request.url))
                page.on("websocket", lambda ws, c=crawl: c.seen.append(ws.url))
                pages = ["/", "/charts/", *_pages(crawl)]
                later: list[str] = []
                for url in pages:
                    later += _press_all(crawl, url)
                # Then each object's own pages, its delete confirmation last (a delete
                # takes its cascade with it: the pages above have been seen by then).
                later = [u for u in dict.fromkeys(later) if u not in pages]
                for url in sorted(later, key=lambda u: u.endswith("/delete/")):
                    _press_all(crawl, url)
                # The header's own buttons, once: theme toggle, then log out (and back in).
                _press_all(crawl, "/admin/", scope="header")
                elsewhere = sorted({u for u in crawl.seen if urlsplit(u).netloc != portal})
                if elsewhere:
                    crawl.problems.append(f"{role}: requests to other hosts: {elsewhere}")
                deletes = sum(bool(DELETE.match(k)) for k in crawl.keys)
                report.append(
                    f"{role}: {crawl.loaded} loads, {crawl.pressed} presses"
                    f" ({deletes} delete confirmations) in {time.monotonic() - started:.0f} s"
                )
                # A viewer has (nearly) nothing to press: the loads are its test.
                assert crawl.loaded >= 30, f"{role} saw almost nothing: {report}"
                assert crawl.pressed >= (2 if role == "viewer" else 10), report
                assert not crawl.problems, "\n".join(crawl.problems)
                if role == "admin_user":
                    # The admin reaches the pages behind links: confirmations and acceptance.
                    assert deletes >= 2, report
                    assert BackupRun.objects.get(pk=shrunk).accepted_at is not None, report
                context.close()
        finally:
            get_redis().flushdb()  # the jobs the presses enqueued: never run
    print("\n".join(report))
