"""Request middleware of the portal."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from portal.lib.text import REASON, find_unstorable


class RefuseUnstorableURLMiddleware:
    """A URL path or query string holding NUL or a lone surrogate gets a 400 naming the
    part, before any view can pass it to the database (e.g. ``/api/pra/hosts/a%00b/...``).
    Bodies are checked by the input schemas (``portal.lib.text.StorableInput``) and forms."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        where = None
        if find_unstorable(request.path) is not None:
            where = "the URL path"
        else:
            found = find_unstorable({k: request.GET.getlist(k) for k in request.GET})
            if found is not None:
                where = f"query parameter {found.split('[')[0]!r}"
        if where is not None:
            return JsonResponse({"error": "invalid", "message": f"{where} {REASON}"}, status=400)
        return self.get_response(request)
