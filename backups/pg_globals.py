"""The roles a per-database restore needs, from the backup's globals (issue 13 §2).

A per-database dump (``pg_dump -Fc``) names its objects' owners and grantees
but does not create them: restored to a server without role ``shop_owner``
it fails ("role shop_owner does not exist"). Each per-database backup also
stores ``pg_dumpall --globals-only`` (``--no-role-passwords`` unless the
source says otherwise). Before a restore, the roles the backup has and the
target lacks are created, as dumped (attributes, settings, comment), with
their memberships — only memberships whose *member* is a role created here:
existing roles are never altered (no ``ALTER``, no ``GRANT … TO existing``).
Everything else in the globals (tablespaces, parameter grants, per-database
role settings) is left out and reported.

``create_missing`` does it in one transaction (all or nothing) and returns the
names it created; a restore that fails afterwards calls ``drop_roles`` with
them, so a failed restore leaves no role behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from backups.choices import ArtifactFormat
from backups.models import BackupArtifact
from backups.storage import Storage
from backups.streaming import CHUNK, open_plain

# Globals of a sane cluster are kilobytes; this bounds what is held in memory.
MAX_GLOBALS_BYTES = 32 << 20

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE = re.compile(rf"^CREATE ROLE ({_IDENT})$", re.S)
_ALTER = re.compile(rf"^ALTER ROLE ({_IDENT}) (WITH |SET |RESET |IN DATABASE )", re.S)
_COMMENT = re.compile(rf"^COMMENT ON ROLE ({_IDENT}) IS ", re.S)
_GRANT = re.compile(
    rf"^GRANT ({_IDENT}) TO ({_IDENT})( WITH ADMIN OPTION)?(?: WITH (?:INHERIT|SET) \w+)*"
    rf"(?: GRANTED BY {_IDENT})?$",
    re.S,
)


class GlobalsError(RuntimeError):
    """The globals could not be read or applied; the message says what to do."""


def _unquote(ident: str) -> str:
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident.lower()


def statements(text: str) -> list[str]:
    """SQL statements of a pg_dumpall file (quotes and comments respected, psql
    meta-commands such as ``\\restrict`` skipped), without their final ``;``."""
    out: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        ch = text[i]
        if at_line_start and ch == "\\" and not "".join(current).strip():
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        at_line_start = False
        if ch == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch in "'\"":
            end = i + 1
            while True:
                end = text.find(ch, end)
                if end < 0:
                    raise GlobalsError("the globals file ends inside a quoted string")
                if text.startswith(ch * 2, end):
                    end += 2
                    continue
                break
            current.append(text[i : end + 1])
            i = end + 1
            continue
        if ch == ";":
            statement = "".join(current).strip()
            if statement:
                out.append(statement)
            current = []
            i += 1
            continue
        if ch == "\n":
            at_line_start = True
        current.append(ch)
        i += 1
    if "".join(current).strip():
        raise GlobalsError("the globals file ends in the middle of a statement")
    return out


@dataclass
class Role:
    name: str
    statements: list[str] = field(default_factory=list)
    attributes: str = ""


@dataclass
class Globals:
    roles: dict[str, Role] = field(default_factory=dict)
    memberships: list[tuple[str, str, bool]] = field(default_factory=list)  # role, member, admin
    skipped: list[str] = field(default_factory=list)


def parse(text: str) -> Globals:
    found = Globals()
    for statement in statements(text):
        flat = " ".join(statement.split()) if "'" not in statement else statement
        if match := _CREATE.match(flat):
            name = _unquote(match.group(1))
            found.roles[name] = Role(name, [statement])
        elif match := _ALTER.match(flat):
            role = found.roles.get(_unquote(match.group(1)))
            if role is None or match.group(2) == "IN DATABASE ":
                found.skipped.append(flat[:200])  # per-database settings go with the database
                continue
            role.statements.append(statement)
            if match.group(2) == "WITH ":
                role.attributes = flat[match.end() :]
        elif match := _COMMENT.match(flat):
            role = found.roles.get(_unquote(match.group(1)))
            if role is None:
                found.skipped.append(flat[:200])
            else:
                role.statements.append(statement)
        elif match := _GRANT.match(" ".join(statement.split())):
            found.memberships.append(
                (_unquote(match.group(1)), _unquote(match.group(2)), bool(match.group(3)))
            )
        elif flat.upper().startswith("SET "):
            continue  # session settings of the dump itself
        else:
            found.skipped.append(flat[:200])
    return found


def globals_of(artifact: BackupArtifact) -> BackupArtifact | None:
    """The globals stored with ``artifact``'s run (None: a backup taken before they were)."""
    return artifact.run.artifacts.filter(format=ArtifactFormat.PG_GLOBALS).first()


def load(storage: Storage, artifact: BackupArtifact) -> Globals:
    chunks: list[bytes] = []
    size = 0
    with open_plain(storage.open(artifact.key), artifact) as reader:
        while data := reader.read(CHUNK):
            size += len(data)
            if size > MAX_GLOBALS_BYTES:
                raise GlobalsError(
                    f"the backup's globals are larger than {MAX_GLOBALS_BYTES >> 20} MiB: "
                    "create the roles by hand (psql -f) and restore again"
                )
            chunks.append(data)
    return parse(b"".join(chunks).decode())


def existing_roles(conn: psycopg.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT rolname FROM pg_roles").fetchall()}


def missing(found: Globals, existing: set[str]) -> list[str]:
    """Roles of the backup the target lacks (in dump order)."""
    return [name for name in found.roles if name not in existing and not name.startswith("pg_")]


def describe(found: Globals, names: list[str]) -> list[str]:
    """People's view of the roles a restore would create ("shop_owner (LOGIN)")."""
    shown = []
    for name in names:
        flags = [
            word
            for word in found.roles[name].attributes.rstrip(";").split()
            if word in {"SUPERUSER", "CREATEROLE", "CREATEDB", "LOGIN", "REPLICATION", "BYPASSRLS"}
        ]
        shown.append(f"{name} ({', '.join(flags)})" if flags else name)
    return shown


@dataclass
class Created:
    roles: list[str]
    memberships: list[str]
    skipped: list[str]


def create_missing(conn: psycopg.Connection, found: Globals) -> Created:
    """Create the roles the server lacks, in one transaction; existing roles stay as they are."""
    names = missing(found, existing_roles(conn))
    new = set(names)
    granted, skipped = [], []
    try:
        with conn.transaction():
            for name in names:
                for statement in found.roles[name].statements:
                    conn.execute(statement)
            known = existing_roles(conn)
            for role, member, admin in found.memberships:
                if member not in new:
                    if role in new:
                        skipped.append(f"GRANT {role} TO {member} (an existing role: not altered)")
                    continue
                if role not in known:
                    skipped.append(f"GRANT {role} TO {member} ({role} does not exist)")
                    continue
                query = sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(role), sql.Identifier(member)
                )
                if admin:
                    query = sql.SQL("{} WITH ADMIN OPTION").format(query)
                conn.execute(query)
                granted.append(f"{role} → {member}" + (" (admin)" if admin else ""))
    except psycopg.Error as exc:
        shown = ", ".join(names)
        raise GlobalsError(
            f"cannot create the roles the backup needs ({shown}) on the target: "
            f"{str(exc).strip()}; no role was created"
        ) from None
    return Created(names, granted, skipped + found.skipped)


def drop_roles(conn: psycopg.Connection, names: list[str]) -> list[str]:
    """Drop roles a failed restore created; returns warnings for those that would not go."""
    warnings = []
    for name in reversed(names):
        try:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            warnings.append(f"role {name} (created by this restore) is left: {str(exc).strip()}")
    return warnings
