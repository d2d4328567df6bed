from django.contrib import admin
from django.urls import path

from portal import views
from portal.api import api

admin.site.site_header = "Ops Portal"
admin.site.site_title = "Ops Portal"
admin.site.index_title = "Operations"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("health", views.health, name="health"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
]
