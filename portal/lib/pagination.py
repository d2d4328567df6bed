"""Admin paging over big tables without counting them.

``COUNT(*)`` over the audit log's 500,000 rows is a scan of the table (~400 ms on a busy
machine) on every page. An unfiltered list needs no exact total: on PostgreSQL the
planner's estimate (``pg_class.reltuples``, kept by ANALYZE / autovacuum) is read
instead when the table is big. Filtered and searched lists, small tables, SQLite and
tables never analysed are counted exactly, filtered ones up to ``COUNT_AT_MOST``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property

#: Below this estimate the exact count is cheap enough, and exact.
ESTIMATE_ABOVE = 20_000


def estimated_rows(queryset: Any) -> int | None:
    """The planner's row estimate of an unfiltered queryset's table, or None (count it)."""
    query = getattr(queryset, "query", None)
    if query is None:  # a list: nothing to estimate
        return None
    if query.where or query.distinct or query.combinator or query.low_mark or query.high_mark:
        return None
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [connection.ops.quote_name(queryset.model._meta.db_table)],
        )
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < ESTIMATE_ABOVE:
        return None
    return int(row[0])


#: A filtered or searched list counts its matches up to here, then says "10000+".
COUNT_AT_MOST = 10_000

#: From this offset on, a page reads its rows' ids first, then those rows: the OFFSET then
#: skips narrow index entries, not whole rows (every column, fetched and thrown away).
IDS_FIRST_FROM = 2_000


class AtLeast(int):
    """A count that stopped at its cap: shown as "10000+", computed with as the cap."""

    def __str__(self) -> str:
        return f"{int(self)}+"


if TYPE_CHECKING:  # generic in django-stubs only
    _Paginator = Paginator[Any]
else:
    _Paginator = Paginator


class EstimatedCountPaginator(_Paginator):
    """``ModelAdmin.paginator`` for big tables: an unfiltered list's total is estimated; a
    filtered or searched one is counted up to ``COUNT_AT_MOST`` matches (a term in every
    row would otherwise count the whole table on each page), so its pages end there."""

    @cached_property
    def count(self) -> int:
        estimate = estimated_rows(self.object_list)
        if estimate is not None:
            return estimate
        if not hasattr(self.object_list, "query"):
            return super().count
        objects: Any = self.object_list
        found = int(objects[: COUNT_AT_MOST + 1].count())
        return AtLeast(COUNT_AT_MOST) if found > COUNT_AT_MOST else found

    def page(self, number: Any) -> Any:
        """A deep page (offset ``IDS_FIRST_FROM`` or more) of a queryset: its ids at that
        offset, then the rows with those ids, in the list's own order."""
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        objects: Any = self.object_list
        query = getattr(objects, "query", None)
        if bottom < IDS_FIRST_FROM or query is None or query.distinct or query.combinator:
            return super().page(number)
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        ids = list(objects.values_list("pk", flat=True)[bottom:top])
        page = self._get_page(objects.filter(pk__in=ids), number, self)  # type: ignore[attr-defined]  # Django's hook, not in django-stubs
        return page
