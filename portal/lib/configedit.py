"""The shared middle of every configuration action: lock the row, apply the named fields,
validate with ``full_clean``, save, and say exactly what changed.

An app's action (``update_policy``, ``update_source``...) wraps one of these in its
transaction with its permission check and its audit event; this module writes no
audit row itself and knows no feature app. Values in the returned change list are
JSON-safe and readable (a related row by its name, many-to-many as a sorted list),
ready for an audit event's details.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import TypeVar

from django.db import models

from portal.errors import RequestRefused
from portal.lib.validation import full_clean_or_refuse

M = TypeVar("M", bound=models.Model)

Readable = str | int | float | bool | None | list[str]
Diff = dict[str, dict[str, Readable]]


def _field(model: type[models.Model], name: str) -> models.Field[object, object] | None:
    for field in model._meta.get_fields():
        if field.name == name and isinstance(field, models.Field):
            return field
    return None


def _is_m2m(model: type[models.Model], name: str) -> bool:
    field = _field(model, name)
    return field is not None and field.many_to_many is True


def _readable(value: object) -> Readable:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, Iterable):
        return sorted(str(item) for item in value)
    return str(value)


def _comparable(value: object) -> object:
    """What decides "changed": primary keys for related rows, the value otherwise."""
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(value, models.QuerySet | list | tuple | set | frozenset):
        return sorted(item.pk if isinstance(item, models.Model) else item for item in value)
    return value


def _current(obj: models.Model, name: str) -> object:
    if _is_m2m(type(obj), name):
        if obj.pk is None:
            return []
        return list(getattr(obj, name).all())
    return getattr(obj, name)


def values(obj: models.Model, fields: Iterable[str]) -> dict[str, Readable]:
    """The named fields of ``obj``, readable and JSON-safe (for an audit event)."""
    return {name: _readable(_current(obj, name)) for name in fields}


def _refuse_unknown(
    fields: Iterable[str], editable: Collection[str], error: type[RequestRefused], what: str
) -> None:
    unknown = sorted(set(fields) - set(editable))
    if unknown:
        raise error("invalid", f"a {what} has no editable field {', '.join(unknown)}")


def create(
    model: type[M],
    fields: Mapping[str, object],
    *,
    editable: Collection[str],
    error: type[RequestRefused],
    what: str,
    exclude: Iterable[str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> M:
    """Validate and save a new row (inside the caller's transaction).

    ``extra``: fields the action sets itself (``created_by``), not the caller.
    """
    _refuse_unknown(fields, editable, error, what)
    plain = {k: v for k, v in fields.items() if not _is_m2m(model, k)}
    obj = model(**plain, **(extra or {}))
    full_clean_or_refuse(obj, error, exclude=exclude)
    obj.save()
    for name, value in fields.items():
        if _is_m2m(model, name):
            getattr(obj, name).set(value)
    return obj


def update(
    model: type[M],
    pk: object,
    changes: Mapping[str, object],
    *,
    editable: Collection[str],
    error: type[RequestRefused],
    what: str,
    exclude: Iterable[str] | None = None,
) -> tuple[M, Diff]:
    """Lock row ``pk``, apply ``changes``, validate and save; (the row, what changed).

    Nothing changed: nothing is written and the diff is empty (calling twice is safe).
    Must run inside the caller's ``transaction.atomic()`` (the row lock lasts until
    its end).
    """
    _refuse_unknown(changes, editable, error, what)
    current = model._default_manager.select_for_update().filter(pk=pk).first()
    if current is None:
        raise error("not_found", f"No {what} #{pk}.")
    before = {name: _current(current, name) for name in changes}
    m2m = {name for name in changes if _is_m2m(model, name)}
    for name, value in changes.items():
        if name not in m2m:
            setattr(current, name, value)
    full_clean_or_refuse(current, error, exclude=exclude)
    diff: Diff = {}
    for name, value in changes.items():
        new = value if name in m2m else getattr(current, name)
        if _comparable(before[name]) != _comparable(new):
            diff[name] = {"old": _readable(before[name]), "new": _readable(new)}
    if not diff:
        return current, diff
    current.save()
    for name in m2m & set(diff):
        getattr(current, name).set(changes[name])
    return current, diff


def delete(model: type[M], pk: object, *, error: type[RequestRefused], what: str) -> M:
    """Lock and delete row ``pk`` (inside the caller's transaction); the row as it was."""
    current = model._default_manager.select_for_update().filter(pk=pk).first()
    if current is None:
        raise error("not_found", f"No {what} #{pk}.")
    gone_pk = current.pk
    current.delete()
    current.pk = gone_pk  # the audit event still names what was deleted
    return current
