"""Compare-and-swap status moves, the only way any request's status changes."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone


def compare_and_swap(
    model: type[models.Model],
    pk: Any,
    current: str,
    new: str,
    allowed: dict[str, set[str]],
    **fields: Any,
) -> bool:
    """Move ``pk`` from ``current`` to ``new`` if it is still ``current``.

    True only for the one caller that made the move; a caller that lost the race
    changes nothing. Raises ``ValueError`` for a move the table does not allow.
    """
    if new not in allowed.get(current, set()):
        raise ValueError(f"illegal transition {current} -> {new}")
    won: int = model._default_manager.filter(pk=pk, status=current).update(
        status=new, status_changed_at=timezone.now(), **fields
    )
    return won == 1
