"""Text the database cannot store, refused once at every boundary.

PostgreSQL refuses NUL in ``text`` and ``jsonb`` ("invalid byte sequence" /
"unsupported Unicode escape sequence"), and an unpaired UTF-16 surrogate (which
JSON can carry as ``"\\ud800"``) cannot be encoded as UTF-8 at all. Either one
reaching a query turns a bad request into a 500 and a rolled-back transaction.
Every way in (API schemas, heartbeats, MCP arguments, command acks, URL paths,
management commands) calls :func:`refuse_unstorable` first, so the client gets
a 4xx naming the field and nothing is written. Django form ``CharField`` already
refuses NUL (``ProhibitNullCharactersValidator``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from ninja import Schema
from pydantic import AfterValidator, model_validator

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REASON = "contains a character that cannot be stored (NUL or an unpaired surrogate)"


class UnstorableText(ValueError):
    """``field`` holds a character the database cannot store."""

    def __init__(self, field: str) -> None:
        self.field = field
        super().__init__(f"{field or 'input'}: {REASON}")


def find_unstorable(value: object, path: str = "") -> str | None:
    """Return the dotted path of the first unstorable string in ``value``, or ``None``.

    Walks strings, mapping keys and values, lists and tuples; other types are fine.
    """
    if isinstance(value, str):
        return path if UNSTORABLE.search(value) else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and UNSTORABLE.search(key):
                return path or "key"
            found = find_unstorable(item, here)
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_unstorable(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def refuse_unstorable(value: Any, field: str = "") -> Any:
    """Return ``value`` unchanged, or raise :class:`UnstorableText` naming the field."""
    found = find_unstorable(value, field)
    if found is not None:
        raise UnstorableText(found)
    return value


def _check_str(value: str) -> str:
    if UNSTORABLE.search(value):
        raise ValueError(REASON)
    return value


#: A pydantic ``str`` that refuses what the database cannot store.
StorableStr = Annotated[str, AfterValidator(_check_str)]


class StorableInput(Schema):
    """Base for input schemas: refuses unstorable text anywhere in the input.

    ``class ProposeIn(StorableInput): ...`` checks every field, nested dicts and
    lists included, before field validation, and names the field.
    """

    @model_validator(mode="before")
    @classmethod
    def _refuse_unstorable(cls, data: Any) -> Any:
        data_obj = getattr(data, "_obj", data)  # ninja wraps the input in a DjangoGetter
        found = find_unstorable(data_obj) if isinstance(data_obj, Mapping | list) else None
        if found is not None:
            raise ValueError(f"{found}: {REASON}")
        return data
