"""The disaster-recovery report's admin page (Backups › Backup sources › DR report).

Read-only: anyone who may see the portal (``portal.view_portal``) may read it; it shows
the same ``backups.dr.build()`` as ``manage.py dr_report``. GET only.
"""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.db.models.options import Options
from django.http import HttpRequest, HttpResponseBase, HttpResponseNotAllowed
from django.template.response import TemplateResponse

from backups import dr

VIEW_PERMISSION = "portal.view_portal"


def dr_report_view(request: HttpRequest, admin_site: AdminSite, opts: Options) -> HttpResponseBase:
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    report = dr.build()
    context = {
        **admin_site.each_context(request),
        "title": "Disaster-recovery report",
        "report": report,
        "exercises": dr.EXERCISES,
        "opts": opts,
    }
    return TemplateResponse(request, "admin/backups/dr_report.html", context)
