"""How each kind of source is read: one transport per kind, behind one interface.

A transport names the components of a backup (one per database, one RDB,
one resources YAML per namespace) and, for each, the tool command that writes
it to stdout. It never puts a secret in argv: passwords go through the
tool's environment (PGPASSWORD, REDISCLI_AUTH) or, inside a pod, through
stdin to a ``read``.

Every command carries its bounds (see ``backups.faults``): libpq tools get
``PGCONNECT_TIMEOUT`` (inside a pod through ``env``) and
``--lock-wait-timeout``, and over the network a ``PgLockWatch`` on their
session; kubectl gets ``--request-timeout``; redis-cli 7.0 has no connect
timeout of its own, so a Redis backup starts with a ``PING`` that must answer
within the connect timeout (``preflight``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from backups import faults
from backups.choices import ArtifactFormat, PgMode, SourceKind, Transport
from backups.faults import FailureCause
from backups.models import BackupSource
from backups.pgwatch import PgLockWatch

# The per-database backup's second artifact: pg_dumpall --globals-only.
GLOBALS_COMPONENT = "globals"
# redis-cli --rdb - writes a diskless transfer's 40-byte EOF marker after the RDB.
RDB_EOF_MARK = 40


class SourceError(RuntimeError):
    """The source is misconfigured or unreachable; the message says what to fix."""

    def __init__(self, message: str, cause: str = FailureCause.CONFIG) -> None:
        super().__init__(message)
        self.cause = cause


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
    label: str = ""  # the tool in messages ("pg_dump", also when run through kubectl exec)
    lock_watch: PgLockWatch | None = None
    deadline: float | None = None  # small commands only: all of it within this many seconds
    deadline_cause: str = FailureCause.TIMEOUT
    expect: bytes | None = None  # small commands only: stdout must contain this

    def finish_tail(self, tail: bytes, stderr: str) -> bytes:
        return tail


class RedisRdbCommand(ToolCommand):
    def finish_tail(self, tail: bytes, stderr: str) -> bytes:
        return b"" if "until EOF marker" in stderr else tail


def read_password(password_env: str, password_file: str) -> str | None:
    """The secret a source names, read now (never stored, never logged): an environment
    variable, or a file under ``BACKUP_SECRETS_DIR`` (any other path is refused unread)."""
    from backups import credentials

    try:
        return credentials.read_password(password_env, password_file)
    except credentials.CredentialError as exc:
        raise SourceError(str(exc)) from None


def kubectl_base(kubeconfig: str, context: str) -> list[str]:
    """kubectl with its kubeconfig/context and a bound on every API request it makes.

    (kubectl retries API discovery: an API server that never answers fails
    after about five request timeouts. An exec stream is not cut by it.)
    """
    argv = ["kubectl", f"--request-timeout={faults.kubectl_timeout()}s"]
    if kubeconfig:
        argv += ["--kubeconfig", kubeconfig]
    if context:
        argv += ["--context", context]
    return argv


def _exec_argv(
    source: BackupSource,
    inner: list[str],
    secret_var: str | None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """kubectl exec into the source's pod; a secret, if any, arrives on stdin.

    ``env`` (never secrets: they are in argv) is set for the inner tool with ``env``.
    """
    if env:
        inner = ["env", *(f"{k}={v}" for k, v in env.items()), *inner]
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

    def _pod_target(self, database: str, *, dumpall: bool = False) -> list[str]:
        """pg_dump's target inside the pod: its local server unless the DSN names a host.

        (pg_dumpall's ``-d`` is a connection string: its database is ``-l``.)
        """
        parts = urlsplit(self.source.dsn)
        argv = ["-U", self._user(), "-l" if dumpall else "-d", database]
        if parts.hostname:
            argv += ["-h", parts.hostname, "-p", str(parts.port or 5432)]
        return argv

    def _discover(self) -> list[str]:
        from backups.runner import run_command

        sql = (
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "ORDER BY datname"
        )
        # Connecting is bounded by PGCONNECT_TIMEOUT; the whole listing by a deadline.
        deadline = faults.connect_timeout() + 60
        if self.source.transport == Transport.KUBECTL_EXEC:
            inner = ["psql", "-X", "-At", *self._pod_target("postgres"), "-c", sql]
            cmd = ToolCommand(
                _exec_argv(
                    self.source, inner, "PGPASSWORD" if self.password else None, self._pod_env()
                ),
                stdin=(self.password + "\n").encode() if self.password else None,
                label="psql (listing databases)",
                deadline=deadline + faults.kubectl_timeout(),
            )
        else:
            cmd = ToolCommand(
                ["psql", "-X", "-At", "-d", pg_url(self.source.dsn, "postgres"), "-c", sql],
                env=self._env(),
                label="psql (listing databases)",
                deadline=deadline,
            )
        result = run_command(cmd)
        if not result.ok:
            raise SourceError(
                f"listing databases failed: {result.message}\n{result.stderr[-500:]}".strip(),
                result.cause,
            )
        return [line for line in result.stdout.decode().splitlines() if line.strip()]

    def _pod_env(self) -> dict[str, str]:
        return {"PGCONNECT_TIMEOUT": str(faults.connect_timeout())}

    def _env(self) -> dict[str, str]:
        env = self._pod_env()
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def _lock_wait(self, watched: bool) -> str:
        """pg_dump's own bound on its initial LOCK TABLEs.

        Over the network the lock watch ends the wait first (and names the
        holder); pg_dump's bound, a little later, is the backstop. Inside a
        pod, where no watch can reach the server, it is the bound.
        """
        seconds = faults.lock_timeout() + (2 if watched else 0)
        return f"--lock-wait-timeout={seconds * 1000}"

    def components(self) -> list[Component]:
        """One dump per database, and the cluster's globals (roles, memberships) with them:
        a database restored to another server needs the roles that own its objects."""
        if self.source.pg_mode == PgMode.DUMPALL and self.databases is None:
            return [Component("cluster", ArtifactFormat.PG_SQL, "cluster.sql.zst")]
        names = self.databases or self.source.database_list or self._discover()
        globals_ = Component(GLOBALS_COMPONENT, ArtifactFormat.PG_GLOBALS, "globals.sql.zst")
        return [globals_] + [
            Component(db, ArtifactFormat.PG_CUSTOM, f"{db}.pgdump.zst") for db in names
        ]

    def command(self, component: Component) -> ToolCommand:
        exec_pod = self.source.transport == Transport.KUBECTL_EXEC
        if component.format in (ArtifactFormat.PG_SQL, ArtifactFormat.PG_GLOBALS):
            if component.format == ArtifactFormat.PG_GLOBALS:
                inner = ["pg_dumpall", "--globals-only"]
                if not self.source.pg_role_passwords:
                    inner.append("--no-role-passwords")  # readable without a superuser, too
            else:
                inner = ["pg_dumpall", "--clean", "--if-exists", self._lock_wait(not exec_pod)]
            database = "postgres"
            target = (
                self._pod_target(database, dumpall=True)
                if exec_pod
                else ["-d", pg_url(self.source.dsn, database)]
            )
        else:
            # No compression inside pg_dump: zstd in the pipeline is faster and smaller.
            inner = ["pg_dump", "--format=custom", "--compress=0", self._lock_wait(not exec_pod)]
            database = component.name
            if exec_pod:
                target = self._pod_target(database)
            else:
                target = ["-d", pg_url(self.source.dsn, database)]
        if exec_pod:
            secret = "PGPASSWORD" if self.password else None
            return ToolCommand(
                _exec_argv(self.source, [*inner, *target], secret, self._pod_env()),
                stdin=(self.password + "\n").encode() if self.password else None,
                label=inner[0],
            )
        watch = PgLockWatch(pg_url(self.source.dsn, database), password=self.password)
        return ToolCommand([*inner, *target], env=self._env(), label=inner[0], lock_watch=watch)


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

    def preflight(self) -> list[ToolCommand]:
        """A PING that must answer within the connect timeout (redis-cli 7.0 has none)."""
        where = self.source.dsn or "the pod's own server"
        if self.source.transport == Transport.KUBECTL_EXEC:
            target = redis_cli_target(self.source.dsn) if self.source.dsn else []
            secret = "REDISCLI_AUTH" if self.password else None
            return [
                ToolCommand(
                    _exec_argv(self.source, ["redis-cli", *target, "PING"], secret),
                    stdin=(self.password + "\n").encode() if self.password else None,
                    label=f"redis-cli PING to {where} (kubectl exec)",
                    deadline=faults.connect_timeout() + faults.kubectl_timeout(),
                    deadline_cause=FailureCause.CONNECT_TIMEOUT,
                    expect=b"PONG",
                )
            ]
        env = {"REDISCLI_AUTH": self.password} if self.password else {}
        return [
            ToolCommand(
                ["redis-cli", *redis_cli_target(self.source.dsn), "PING"],
                env=env,
                label=f"redis-cli PING to {where}",
                deadline=faults.connect_timeout(),
                deadline_cause=FailureCause.CONNECT_TIMEOUT,
                expect=b"PONG",
            )
        ]

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
                label="redis-cli --rdb",
            )
        env = {"REDISCLI_AUTH": self.password} if self.password else {}
        argv = ["redis-cli", *redis_cli_target(self.source.dsn), "--rdb", "-"]
        return RedisRdbCommand(argv, env=env, holdback=RDB_EOF_MARK, label="redis-cli --rdb")


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
        return ToolCommand(argv, label="kubectl get")


def transport_for(source: BackupSource) -> SourceTransport:
    if source.kind == SourceKind.POSTGRES:
        return PostgresTransport(source)
    if source.kind == SourceKind.REDIS:
        return RedisTransport(source)
    if source.kind == SourceKind.KUBERNETES:
        return KubernetesTransport(source)
    if source.kind == SourceKind.TERRAFORM:
        from backups.terraform import TerraformTransport

        return TerraformTransport(source)
    raise SourceError(f"unknown source kind {source.kind!r}")
