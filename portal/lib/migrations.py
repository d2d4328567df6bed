"""Migration operations for indexes on big tables, working on PostgreSQL and SQLite alike.

- ``AddIndexConcurrently``: ``CREATE INDEX CONCURRENTLY`` on PostgreSQL (no write lock
  on a table in use; the migration needs ``atomic = False``), a plain index elsewhere.
- ``TrigramIndex``: a pg_trgm GIN index on ``UPPER(column::text)``, the expression the
  admin's ``icontains`` search compares, so ``LIKE '%term%'`` is an index scan instead
  of a sequential scan. PostgreSQL only: on SQLite (dev) it does nothing. It is kept
  out of the model state on purpose: SQLite rebuilds tables from the model state, and
  it has neither GIN nor operator classes.
- ``TrigramExtension`` (Django's): ``CREATE EXTENSION IF NOT EXISTS pg_trgm``, skipped on
  other databases. pg_trgm is a *trusted* extension (PostgreSQL >= 13): the database's
  owner may create it without being a superuser; otherwise a superuser runs
  ``CREATE EXTENSION pg_trgm`` in the portal's database once before ``migrate``
  (README.md, Running in production).
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import AddIndexConcurrently as _PgConcurrently
from django.contrib.postgres.operations import TrigramExtension
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations import AddIndex
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState

__all__ = ["AddIndexConcurrently", "TrigramExtension", "TrigramIndex"]


class AddIndexConcurrently(_PgConcurrently):
    """Django's ``AddIndexConcurrently`` on PostgreSQL; an ordinary ``AddIndex`` elsewhere."""

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class TrigramIndex(Operation):
    """``CREATE INDEX CONCURRENTLY <name> ON <table> USING gin (UPPER(<column>::text)
    gin_trgm_ops)`` on PostgreSQL (after ``TrigramExtension``); nothing elsewhere."""

    reversible = True
    atomic = False

    def __init__(self, table: str, column: str, name: str) -> None:
        self.table, self.column, self.name = table, column, name

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [self.table, self.column, self.name], {})

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        pass  # not part of the model state (see the module docstring)

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        quote = schema_editor.quote_name
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote(self.name)} ON {quote(self.table)} "
            f"USING gin (UPPER({quote(self.column)}::text) gin_trgm_ops)"
        )
        # Statistics of the new expression: without them the planner guesses ten matches
        # for any term and picks the index even for a term every row contains.
        schema_editor.execute(f"ANALYZE {quote(self.table)}")

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        schema_editor.execute(
            f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(self.name)}"
        )

    def describe(self) -> str:
        return f"Trigram index {self.name} on {self.table}.{self.column} (PostgreSQL only)"

    @property
    def migration_name_fragment(self) -> str:
        return f"trigram_{self.name}"
