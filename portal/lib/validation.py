"""Model validation in the actions layer: ``full_clean`` and its errors as one clear line."""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import models

from portal.errors import RequestRefused


def describe(exc: ValidationError) -> str:
    """``field: message message; other: message`` (non-field errors by themselves)."""
    if not hasattr(exc, "error_dict"):
        return " ".join(exc.messages)
    parts = []
    for field, messages in exc.message_dict.items():
        text = " ".join(messages)
        parts.append(text if field == "__all__" else f"{field}: {text}")
    return "; ".join(parts)


def full_clean_or_refuse(
    obj: models.Model,
    error: type[RequestRefused] = RequestRefused,
    *,
    exclude: Iterable[str] | None = None,
    prefix: str = "",
) -> None:
    """``obj.full_clean()``; a failure becomes ``error("invalid", "<prefix>field: ...")``."""
    try:
        obj.full_clean(exclude=list(exclude) if exclude is not None else None)
    except ValidationError as exc:
        raise error("invalid", f"{prefix}{describe(exc)}") from None
