"""The admin index for ops people: ``{% ops_groups app_list as groups %}``.

Django lists models by app ("Portal", "Pra", "Django-RQ"); people on call look for
what they need to do. This regroups the same entries (same URLs, same permission
filtering: only what ``app_list`` already holds) under task names, renames the ones
whose model names mean nothing to them, and keeps anything unlisted under "Other" so
no page ever disappears from the index.
"""

from __future__ import annotations

from django import template

register = template.Library()

# (group, what it is for, [(app_label, model_name), ...]) in the order people need them.
GROUPS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Respond", "what is happening and what waits for people", [
        ("incidents", "incident"), ("pra", "praaction"), ("backups", "restorerequest"),
        ("incidents", "autopatchattempt"),
    ]),
    ("Backups", "sources, runs and where restores may go", [
        ("backups", "backupsource"), ("backups", "backuprun"), ("backups", "restoretarget"),
    ]),
    ("Hosts and agents", "the machines and what reports from them", [
        ("pra", "host"), ("incidents", "agent"), ("pra", "diagnosticrun"),
        ("incidents", "agentcommand"),
    ]),
    ("Rules and alerting", "who must approve, what opens incidents, who gets told", [
        ("portal", "approvalrule"), ("incidents", "detectionrule"), ("incidents", "opspolicy"),
        ("portal", "escalationlevel"), ("portal", "notificationchannel"),
        ("portal", "notification"),
    ]),
    ("Records", "append-only history", [("portal", "auditevent"), ("incidents", "decision")]),
    ("People and access", "accounts, roles and tokens", [
        ("auth", "user"), ("auth", "group"), ("portal", "apitoken"),
    ]),
    ("Job queues", "background work", [("django_rq", "dashboard")]),
]  # fmt: skip

NAMES = {
    ("pra", "praaction"): "Remediation actions",
    ("incidents", "autopatchattempt"): "Auto-patch attempts",
    ("incidents", "opspolicy"): "Self-healing policy",
    ("portal", "auditevent"): "Audit log",
    ("portal", "notification"): "Notifications sent",
    ("portal", "apitoken"): "Personal API tokens",
    ("auth", "group"): "Roles (groups)",
    ("pra", "diagnosticrun"): "Diagnostic runs",
    ("incidents", "decision"): "Self-healing decisions",
    ("django_rq", "dashboard"): "Queue internals (jobs, workers; admin only)",
}


@register.simple_tag
def ops_groups(app_list, queue_status: bool = False) -> list[dict]:
    """The entries of ``app_list`` regrouped: [{"name", "about", "models": [...]}, ...].

    ``queue_status``: the person may see the read-only queue page, listed under "Job
    queues" even when django_rq's own pages are not theirs."""
    entries = {}
    for app in app_list or []:
        for model in app.get("models", []):
            key = (app["app_label"], model["object_name"].lower())
            entries[key] = {**model, "name": NAMES.get(key, model["name"]), "key": "-".join(key)}
    groups = []
    for name, about, keys in GROUPS:
        models = [entries.pop(key) for key in keys if key in entries]
        queues = queue_status and name == "Job queues"
        if models or queues:
            groups.append({"name": name, "about": about, "models": models, "queues": queues})
    if entries:
        groups.append(
            {"name": "Other", "about": "", "models": list(entries.values()), "queues": False}
        )
    return groups
