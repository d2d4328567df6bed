"""Vocabularies every app adds to: audit event types, live event kinds, notification kinds.

The portal owns the registries, not their words: each app declares its own kinds
as a ``TextChoices`` in its ``choices.py`` and registers it::

    @AUDIT_EVENTS.register
    class RemediationAudit(models.TextChoices):
        PRA_PROPOSED = "PRA_PROPOSED", "Action proposed"

The fields storing these values (``AuditEvent.event_type``, ``Notification.kind``)
carry no database-level choices, so a new kind needs no migration anywhere; labels
come from here (``label()``), and a stored value no app declares any more still
displays (as itself).

A registry reads like the enumeration it replaces: ``AUDIT_EVENTS.PRA_PROPOSED`` is
the registered member, ``AUDIT_EVENTS("PRA_PROPOSED")`` looks one up by value
(``ValueError`` if unknown), and iterating, ``in``, ``values`` and ``choices`` cover
every registered kind in registration order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import models

C = TypeVar("C", bound=type[models.TextChoices])


class Vocabulary:
    """The kinds of one sort of thing, as every app registered them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._by_value: dict[str, models.TextChoices] = {}
        self._by_name: dict[str, models.TextChoices] = {}

    def register(self, choices: C) -> C:
        """Add every member of ``choices`` (usable as a class decorator).

        Registering the same members again is a no-op (module reloads); a value or a
        name another app already declared differently is a configuration error.
        """
        for member in choices:
            known = self._by_value.get(member.value)
            if known is not None and (known.name, known.label) != (member.name, member.label):
                raise ImproperlyConfigured(
                    f"{self.name} kind {member.value!r} of {choices.__module__}."
                    f"{choices.__qualname__} is already declared by "
                    f"{type(known).__module__}.{type(known).__qualname__}"
                )
            named = self._by_name.get(member.name)
            if named is not None and named.value != member.value:
                raise ImproperlyConfigured(
                    f"{self.name} kind name {member.name} is already declared "
                    f"(as {named.value!r}) by {type(named).__module__}"
                )
        for member in choices:  # all checked first: a refused class adds nothing
            self._by_value.setdefault(member.value, member)
            self._by_name.setdefault(member.name, member)
        return choices

    # --- reading, the way a TextChoices class reads -------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._by_name[name]
        except KeyError:
            raise AttributeError(f"no {self.name} kind named {name} is registered") from None

    def __call__(self, value: Any) -> models.TextChoices:
        """The registered member for ``value``; ``ValueError`` when no app declares it."""
        try:
            return self._by_value[str(value)]
        except KeyError:
            raise ValueError(f"{value!r} is not a registered {self.name} kind") from None

    def __iter__(self) -> Iterator[models.TextChoices]:
        return iter(list(self._by_value.values()))

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value in self._by_value

    def __len__(self) -> int:
        return len(self._by_value)

    @property
    def values(self) -> list[str]:
        return list(self._by_value)

    @property
    def choices(self) -> list[tuple[str, str]]:
        """(value, label) pairs, e.g. for a form field or an admin filter."""
        return [(m.value, str(m.label)) for m in self._by_value.values()]

    def label(self, value: str) -> str:
        """The label of ``value``; the value itself when no app declares it (any more)."""
        member = self._by_value.get(value)
        return str(member.label) if member is not None else value

    def __repr__(self) -> str:
        return f"<Vocabulary {self.name}: {len(self)} kinds>"


AUDIT_EVENTS = Vocabulary("audit event")
LIVE_EVENTS = Vocabulary("live event")
NOTIFICATIONS = Vocabulary("notification")


def list_filter(vocabulary: Vocabulary, field: str, title: str) -> type:
    """An admin list filter on ``field`` offering the registered kinds, by label.

    A value stored but no longer declared is still filterable through the URL
    (``?field=VALUE``); it just has no entry in the list.
    """
    from django.contrib import admin

    class KindFilter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
            return sorted(vocabulary.choices, key=lambda pair: pair[1].lower())

        def queryset(self, request: Any, queryset: Any) -> Any:
            value = self.value()
            return queryset.filter(**{field: value}) if value else queryset

    KindFilter.title = title
    KindFilter.__name__ = f"{field.title().replace('_', '')}Filter"
    return KindFilter
