from django.urls import re_path

from portal.consumers import LiveConsumer

websocket_urlpatterns = [
    re_path(r"^ws/live/$", LiveConsumer.as_asgi()),
    re_path(
        r"^ws/live/(?P<subject_type>[a-z_]+\.[a-z_]+)/(?P<subject_id>[0-9]{1,18})/$",
        LiveConsumer.as_asgi(),
    ),
]
