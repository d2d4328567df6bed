"""Which backups to keep: N days, plus weekly and monthly keeps (grandfather-father-son).

``plan`` is pure (runs in, ids to delete out) so its one promise is easy to
test: the newest verified backup of a source is never deleted, whatever the
settings and whatever the dates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Candidate:
    id: int
    created: datetime
    verified: bool


def _best(group: list[Candidate]) -> Candidate:
    verified = [c for c in group if c.verified]
    return max(verified or group, key=lambda c: (c.created, c.id))


def plan(
    candidates: Iterable[Candidate],
    *,
    now: datetime,
    days: int,
    weekly: int = 0,
    monthly: int = 0,
) -> tuple[set[int], set[int]]:
    """Return (keep, delete) ids among finished, still-stored backups of one source."""
    items = list(candidates)
    keep: set[int] = set()
    cutoff = now - timedelta(days=days)
    keep.update(c.id for c in items if c.created >= cutoff)
    verified = [c for c in items if c.verified]
    if verified:
        keep.add(max(verified, key=lambda c: (c.created, c.id)).id)
    elif items:
        # Nothing verified yet: keep the newest anyway rather than leave nothing.
        keep.add(max(items, key=lambda c: (c.created, c.id)).id)
    for count, bucket_of in ((weekly, _week), (monthly, _month)):
        if count <= 0:
            continue
        wanted = {bucket_of(now, back) for back in range(count)}
        groups: dict[tuple, list[Candidate]] = {}
        for c in items:
            bucket = bucket_of(c.created, 0)
            if bucket in wanted:
                groups.setdefault(bucket, []).append(c)
        keep.update(_best(group).id for group in groups.values())
    delete = {c.id for c in items} - keep
    return keep, delete


def _week(moment: datetime, back: int) -> tuple[int, int]:
    year, week, _ = (moment - timedelta(weeks=back)).isocalendar()
    return year, week


def _month(moment: datetime, back: int) -> tuple[int, int]:
    index = moment.year * 12 + (moment.month - 1) - back
    return index // 12, index % 12 + 1
