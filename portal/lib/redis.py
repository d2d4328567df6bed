"""Redis connections from REDIS_URL, shared per URL."""

from __future__ import annotations

from functools import lru_cache

import redis


@lru_cache(maxsize=8)
def _client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def get_redis(url: str | None = None, timeout: float = 2.0) -> redis.Redis:
    if url is None:
        from django.conf import settings

        url = settings.REDIS_URL
    return _client(url, timeout)


def ping(url: str, timeout: float = 1.0) -> str | None:
    """None when Redis answers, else a short reason."""
    try:
        get_redis(url, timeout).ping()
    except (redis.RedisError, OSError) as exc:
        return str(exc) or exc.__class__.__name__
    return None
