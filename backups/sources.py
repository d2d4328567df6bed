"""How each kind of source is read: one transport per kind, behind one interface.

A transport names the components of a backup (one per database, one RDB,
one resources YAML per namespace) and, for each, the tool command that writes
it to stdout. It never puts a secret in argv: passwords go through the
tool's environment (PGPASSWORD, REDISCLI_AUTH) or, inside a pod, through
stdin to a ``read``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from backups.choices import ArtifactFormat, PgMode, SourceKind, Transport
from backups.models import BackupSource

# redis-cli --rdb - writes a diskless transfer's 40-byte EOF marker after the RDB.
RDB_EOF_MARK = 40


class SourceError(RuntimeError):
    """The source is misconfigured or unreachable; the message says what to fix."""


@dataclass(frozen=True)
class Component:
    name: str
    format: str
    filename: str


@dataclass
class ToolCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes | None = None
    holdback: int = 0

    def finish_tail(self, tail: bytes, stderr: str) -> bytes:
        return tail


class RedisRdbCommand(ToolCommand):
    def finish_tail(self, tail: bytes, stderr: str) -> bytes:
        return b"" if "until EOF marker" in stderr else tail


def read_password(password_env: str, password_file: str) -> str | None:
    """The secret a source names, read now (never stored, never logged)."""
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise SourceError(f"environment variable {password_env} (the password) is not set")
        return value
    if password_file:
        try:
            return Path(password_file).read_text().rstrip("\n")
        except OSError as exc:
            raise SourceError(f"password file {password_file} unreadable: {exc.strerror}") from None
    return None


def kubectl_base(kubeconfig: str, context: str) -> list[str]:
    argv = ["kubectl"]
    if kubeconfig:
        argv += ["--kubeconfig", kubeconfig]
    if context:
        argv += ["--context", context]
    return argv


def _exec_argv(source: BackupSource, inner: list[str], secret_var: str | None) -> list[str]:
    """kubectl exec into the source's pod; a secret, if any, arrives on stdin."""
    argv = [*kubectl_base(source.kubeconfig, source.kube_context), "exec", "-i"]
    argv += ["-n", source.kube_namespace, source.kube_pod]
    if source.kube_container:
        argv += ["-c", source.kube_container]
    argv.append("--")
    if secret_var:
        script = f'IFS= read -r {secret_var}; export {secret_var}; exec "$@"'
        return [*argv, "sh", "-c", script, "sh", *inner]
    return [*argv, *inner]


def pg_url(dsn: str, database: str) -> str:
    """The source's DSN pointed at ``database`` (it never holds a password)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(scheme="postgresql", path="/" + database))


class SourceTransport(Protocol):
    def components(self) -> list[Component]: ...

    def command(self, component: Component) -> ToolCommand: ...


class PostgresTransport:
    def __init__(self, source: BackupSource, *, databases: list[str] | None = None) -> None:
        self.source = source
        self.databases = databases
        self.password = read_password(source.password_env, source.password_file)

    def _user(self) -> str:
        return urlsplit(self.source.dsn).username or "postgres"

    def _pod_target(self, database: str) -> list[str]:
        """pg_dump's target inside the pod: its local server unless the DSN names a host."""
        parts = urlsplit(self.source.dsn)
        argv = ["-U", self._user(), "-d", database]
        if parts.hostname:
            argv += ["-h", parts.hostname, "-p", str(parts.port or 5432)]
        return argv

    def _discover(self) -> list[str]:
        sql = (
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "ORDER BY datname"
        )
        if self.source.transport == Transport.KUBECTL_EXEC:
            inner = ["psql", "-X", "-At", *self._pod_target("postgres"), "-c", sql]
            cmd = ToolCommand(
                _exec_argv(self.source, inner, "PGPASSWORD" if self.password else None),
                stdin=(self.password + "\n").encode() if self.password else None,
            )
        else:
            cmd = ToolCommand(
                ["psql", "-X", "-At", "-d", pg_url(self.source.dsn, "postgres"), "-c", sql],
                env=self._env(),
            )
        result = subprocess.run(
            cmd.argv,
            input=cmd.stdin,
            env={**os.environ, **cmd.env},
            capture_output=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise SourceError(f"listing databases failed: {result.stderr.decode()[-500:]}")
        return [line for line in result.stdout.decode().splitlines() if line.strip()]

    def _env(self) -> dict[str, str]:
        return {"PGPASSWORD": self.password} if self.password else {}

    def components(self) -> list[Component]:
        if self.source.pg_mode == PgMode.DUMPALL and self.databases is None:
            return [Component("cluster", ArtifactFormat.PG_SQL, "cluster.sql.zst")]
        names = self.databases or self.source.database_list or self._discover()
        return [Component(db, ArtifactFormat.PG_CUSTOM, f"{db}.pgdump.zst") for db in names]

    def command(self, component: Component) -> ToolCommand:
        exec_pod = self.source.transport == Transport.KUBECTL_EXEC
        if component.format == ArtifactFormat.PG_SQL:
            inner = ["pg_dumpall", "--clean", "--if-exists"]
            target = (
                self._pod_target("postgres")
                if exec_pod
                else ["-d", pg_url(self.source.dsn, "postgres")]
            )
        else:
            # No compression inside pg_dump: zstd in the pipeline is faster and smaller.
            inner = ["pg_dump", "--format=custom", "--compress=0"]
            if exec_pod:
                target = self._pod_target(component.name)
            else:
                target = ["-d", pg_url(self.source.dsn, component.name)]
        if exec_pod:
            secret = "PGPASSWORD" if self.password else None
            return ToolCommand(
                _exec_argv(self.source, [*inner, *target], secret),
                stdin=(self.password + "\n").encode() if self.password else None,
            )
        return ToolCommand([*inner, *target], env=self._env())


def redis_cli_target(url: str) -> list[str]:
    parts = urlsplit(url)
    argv = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    if parts.username:
        argv += ["--user", parts.username]
    return argv


class RedisTransport:
    def __init__(self, source: BackupSource) -> None:
        self.source = source
        self.password = read_password(source.password_env, source.password_file)

    def components(self) -> list[Component]:
        return [Component("redis", ArtifactFormat.RDB, "dump.rdb.zst")]

    def command(self, component: Component) -> ToolCommand:
        if self.source.transport == Transport.KUBECTL_EXEC:
            # In the pod, redis-cli talks to the pod's own server unless the DSN names one.
            where = redis_cli_target(self.source.dsn) if self.source.dsn else []
            inner = ["redis-cli", *where, "--rdb", "-"]
            secret = "REDISCLI_AUTH" if self.password else None
            return RedisRdbCommand(
                _exec_argv(self.source, inner, secret),
                stdin=(self.password + "\n").encode() if self.password else None,
                holdback=RDB_EOF_MARK,
            )
        env = {"REDISCLI_AUTH": self.password} if self.password else {}
        argv = ["redis-cli", *redis_cli_target(self.source.dsn), "--rdb", "-"]
        return RedisRdbCommand(argv, env=env, holdback=RDB_EOF_MARK)


class KubernetesTransport:
    def __init__(self, source: BackupSource) -> None:
        self.source = source

    def components(self) -> list[Component]:
        namespaces = self.source.namespace_list
        if not namespaces:
            return [Component("resources", ArtifactFormat.K8S_YAML, "resources.yaml.zst")]
        return [
            Component(f"ns-{ns}", ArtifactFormat.K8S_YAML, f"ns-{ns}.yaml.zst") for ns in namespaces
        ]

    def command(self, component: Component) -> ToolCommand:
        scope = ["-A"] if component.name == "resources" else ["-n", component.name[3:]]
        argv = [
            *kubectl_base(self.source.kubeconfig, self.source.kube_context),
            "get",
            self.source.kube_kinds,
            *scope,
            "-o",
            "yaml",
        ]
        return ToolCommand(argv)


def transport_for(source: BackupSource) -> SourceTransport:
    if source.kind == SourceKind.POSTGRES:
        return PostgresTransport(source)
    if source.kind == SourceKind.REDIS:
        return RedisTransport(source)
    if source.kind == SourceKind.KUBERNETES:
        return KubernetesTransport(source)
    raise SourceError(f"unknown source kind {source.kind!r}")
