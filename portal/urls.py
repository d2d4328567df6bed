from django.contrib import admin
from django.urls import path

from portal import views
from portal.admin import queue_status_view
from portal.admin_users import own_password_change
from portal.api import api, docs_asset

admin.site.site_header = "Ops Portal"
admin.site.site_title = "Ops Portal"
admin.site.index_title = "Operations"
# Django's sidebar lists models by app ("Pra", "Django-RQ", "Api tokens"); the header links
# the dashboard, the charts and the index, which groups them for people on call.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("charts/", views.charts, name="charts"),
    path("health", views.health, name="health"),
    path("metrics", views.metrics, name="metrics"),
    # Before admin.site.urls, whose catch-all would answer 404.
    path("admin/queues/", admin.site.admin_view(queue_status_view), name="queue_status"),
    # The admin's own page, with an audit event (same URL, so admin:password_change).
    path(
        "admin/password_change/",
        admin.site.admin_view(own_password_change),
        name="own_password_change",
    ),
    path("admin/", admin.site.urls),
    path("api/docs/assets/<str:name>", docs_asset, name="api_docs_asset"),
    path("api/", api.urls),
]
