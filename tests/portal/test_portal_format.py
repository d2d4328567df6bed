"""The shared formatting filters (portal.templatetags.portal_format)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.template import Context, Template
from django.utils import timezone

from portal.templatetags.portal_format import (
    exact_time,
    human_bytes,
    human_duration,
    relative_words,
)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0.05, "50 ms"),
        (timedelta(seconds=120.530157), "2 min 0 s"),
        (3.25, "3.2 s"),
        (42, "42 s"),
        (3900, "1 h 5 min"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
        (None, "—"),
        ("nonsense", "—"),
    ],
)
def test_durations_read_like_people_say_them(value, words):
    assert human_duration(value) == words


@pytest.mark.parametrize(
    ("value", "words"),
    [(512, "512 B"), (28160, "27.5 KB"), (3 * 1024**2 + 1, "3.0 MB"), (None, "—")],
)
def test_sizes_read_like_people_say_them(value, words):
    assert human_bytes(value) == words


def test_relative_times_name_the_exact_time_and_zone_on_hover(settings):
    settings.TIME_ZONE = "UTC"
    now = timezone.now()
    assert relative_words(now - timedelta(minutes=3, seconds=10), now) == "3 min ago"
    assert relative_words(now + timedelta(minutes=4, seconds=5), now) == "in 4 min"
    assert relative_words(now - timedelta(seconds=2), now) == "just now"
    moment = datetime(2020, 12, 1, 20, 23, 5, tzinfo=UTC)
    assert exact_time(moment) == "2020-12-01 20:23:05 UTC"
    html = Template("{% load portal_format %}{{ m|ago }}").render(Context({"m": moment}))
    assert html.startswith(
        '<time datetime="2020-12-01T20:23:05+00:00" title="2020-12-01 20:23:05 UTC"'
    )
    assert html.endswith(" d ago</time>")


def test_rates_over_nothing_say_so():
    template = Template("{% load portal_format %}{{ a|pct }}|{{ b|pct }}")
    assert template.render(Context({"a": None, "b": 97.46})) == "no data yet|97.5 %"
