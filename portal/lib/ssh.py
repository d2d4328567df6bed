"""SSH transport: one command on one host, with a pinned host key. Nothing else.

The portal never trusts a host key on first use: the caller passes the key it
pinned, and a different key is a ``HostKeyMismatch`` before authentication.
Errors are classified by *when* they happen, because that decides whether a
retry is safe: ``Unreachable`` means the command cannot have started;
``CommandTimeout`` means it may have.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import paramiko

DEFAULT_MAX_OUTPUT = 64 * 1024
TRUNCATION_MARK = "\n[… output truncated by the portal …]\n"


class SSHError(Exception):
    """Base class; ``before_start`` tells whether the command could have started."""

    before_start = True


class Unreachable(SSHError):
    """Could not connect or authenticate: the command did not start."""


class HostKeyMismatch(SSHError):
    """The host presented a key other than the pinned one. Possible interception."""


class AuthFailed(Unreachable):
    """The host refused our key (never retried: it will not fix itself)."""


class CommandTimeout(SSHError):
    """The command started but did not finish in time."""

    before_start = False


class ConnectionLost(SSHError):
    """The connection ended while the command ran, before its exit status came: the
    command may have run, partly or fully. Never retried."""

    before_start = False


class KeyFileError(SSHError):
    """The portal's private key file is missing or unreadable (configuration)."""


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    user: str
    host_key: str  # pinned OpenSSH public key line: "ssh-ed25519 AAAA..."


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration: float = 0.0


def parse_host_key(line: str) -> paramiko.PKey:
    """Parse ``"type base64 [comment]"``; raise ``ValueError`` with a clear message."""
    parts = (line or "").strip().split()
    if len(parts) < 2:
        raise ValueError("a host key looks like 'ssh-ed25519 AAAA…'")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1], validate=True))
    except Exception:
        raise ValueError(f"not a valid {parts[0]} public key") from None


def fingerprint(key_line_or_key: str | paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:…`` fingerprint."""
    key = parse_host_key(key_line_or_key) if isinstance(key_line_or_key, str) else key_line_or_key
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


@lru_cache(maxsize=16)
def _load_private_key(path: str, mtime: float) -> paramiko.PKey:
    return paramiko.PKey.from_path(path)


def load_private_key(path: str | Path) -> paramiko.PKey:
    try:
        return _load_private_key(str(path), Path(path).stat().st_mtime)
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise KeyFileError(f"cannot load SSH private key {path}: {exc}") from None


def _socket(address: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        raise Unreachable(f"cannot connect to {address}:{port}: {exc.strerror or exc}") from None
    # paramiko leaves Nagle on; with delayed ACKs that stalls the handshake (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Unreachable(f"{what}: no answer within the connect timeout")
    return left


def _handshake(sock: socket.socket, where: str, timeout: float, deadline: float,
               key_types: str | None = None) -> paramiko.Transport:  # fmt: skip
    """TCP is up: negotiate SSH before ``deadline`` or raise ``Unreachable``.

    paramiko's ``start_client`` returns (it does not raise) when its timeout passes
    with no banner, e.g. a port that accepts connections and never speaks; the
    transport is then half-open and ``get_remote_server_key`` raises a bare
    ``SSHException``. Both end here as a classified, timely ``Unreachable``.
    """
    transport = paramiko.Transport(sock)
    try:
        left = _remaining(deadline, where)
        transport.banner_timeout = left
        transport.handshake_timeout = left
        transport.auth_timeout = left
        if key_types is not None:
            # Ask for the pinned key type first, so a host with several keys offers that one.
            options = transport.get_security_options()
            if key_types in options.key_types:
                options.key_types = [key_types, *(t for t in options.key_types if t != key_types)]
        try:
            transport.start_client(timeout=left)
            remote = transport.get_remote_server_key()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if time.monotonic() >= deadline or "No existing session" in str(exc):
                raise Unreachable(
                    f"{where} accepted the connection but completed no SSH handshake within "
                    f"{timeout:.0f}s (a hung host, or not an SSH server)"
                ) from None
            raise Unreachable(f"SSH handshake with {where} failed: {exc}") from None
        if remote is None or not transport.is_active():
            raise Unreachable(f"SSH handshake with {where} did not complete")
    except Unreachable:
        transport.close()
        raise
    return transport


def _start(endpoint: Endpoint, timeout: float, deadline: float) -> paramiko.Transport:
    pinned = parse_host_key(endpoint.host_key)
    where = f"{endpoint.address}:{endpoint.port}"
    sock = _socket(endpoint.address, endpoint.port, _remaining(deadline, where))
    transport = _handshake(sock, where, timeout, deadline, key_types=pinned.get_name())
    remote = transport.get_remote_server_key()
    if not hmac.compare_digest(remote.asbytes(), pinned.asbytes()):
        transport.close()
        raise HostKeyMismatch(
            f"host key mismatch for {endpoint.address}:{endpoint.port}: expected "
            f"{fingerprint(pinned)}, got {remote.get_name()} {fingerprint(remote)}. "
            "Refusing to connect; re-pin the key only if the change is known."
        )
    return transport


def fetch_host_key(address: str, port: int = 22, timeout: float = 10.0) -> str:
    """Read the key a host presents (to show its fingerprint before pinning)."""
    deadline = time.monotonic() + timeout
    where = f"{address}:{port}"
    sock = _socket(address, port, timeout)
    transport = _handshake(sock, where, timeout, deadline)
    try:
        return key_line(transport.get_remote_server_key())
    finally:
        transport.close()


class _Bounded:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def add(self, data: bytes) -> bytes:
        room = self.limit - self.size
        if room <= 0:
            self.truncated = self.truncated or bool(data)
            return b""
        kept = data[:room]
        self.truncated = self.truncated or len(kept) < len(data)
        self.chunks.append(kept)
        self.size += len(kept)
        return kept

    def text(self) -> str:
        body = b"".join(self.chunks).decode("utf-8", errors="replace")
        return body + TRUNCATION_MARK if self.truncated else body


class Session:
    """An authenticated connection with one open channel, ready to run one command.

    Opening it (TCP, handshake, pinned key check, auth) is the slow part; a caller
    may open it while it does other work and send the command only once it is
    sure the command should run (``exec``), or ``close`` it unused.
    """

    def __init__(self, endpoint: Endpoint, key_file: str | Path, connect_timeout: float = 10.0):
        pkey = load_private_key(key_file)
        self.started = time.monotonic()
        # One budget for the whole connection (TCP, handshake, auth, session): a host
        # that stalls at any step fails within ``connect_timeout``, not a multiple of it.
        deadline = self.started + connect_timeout
        where = f"{endpoint.address}:{endpoint.port}"
        self.transport = _start(endpoint, connect_timeout, deadline)
        try:
            try:
                self.transport.auth_timeout = _remaining(deadline, where)
                self.transport.auth_publickey(endpoint.user, pkey)
            except paramiko.AuthenticationException as exc:
                if time.monotonic() >= deadline or "timeout" in str(exc).lower():
                    raise Unreachable(f"{where}: SSH authentication timed out") from None
                raise AuthFailed(
                    f"{endpoint.user}@{endpoint.address} refused the portal's key ({key_file})"
                ) from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise Unreachable(f"SSH authentication failed: {exc}") from None
            try:
                self.channel = self.transport.open_session(timeout=_remaining(deadline, where))
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise Unreachable(f"cannot open an SSH session: {exc}") from None
        except SSHError:
            self.transport.close()
            raise

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec(
        self,
        command: str,
        *,
        command_timeout: float = 120.0,
        max_output: int = DEFAULT_MAX_OUTPUT,
        on_output: Callable[[str], None] | None = None,
        on_tick: Callable[[], None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> CommandResult:
        """Send ``command`` and collect its output; ``on_tick`` runs at least twice a second.

        ``on_start`` is called right before the command is sent.
        """
        channel = self.channel
        if on_start is not None:
            on_start()
        deadline = time.monotonic() + command_timeout
        # paramiko waits for the exec reply without a timeout: a host that hangs right
        # after authentication would hold the worker forever. The deadline closes the
        # transport, which wakes that wait.
        guard = threading.Timer(command_timeout, self.transport.close)
        guard.daemon = True
        guard.start()
        try:
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError):
            if time.monotonic() >= deadline:
                raise CommandTimeout(
                    f"the host did not answer the command request within {command_timeout:.0f}s"
                ) from None
            raise
        finally:
            guard.cancel()
        stdout, stderr = _Bounded(max_output), _Bounded(max_output)
        while True:
            # The deadline holds even when the target never stops talking.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                channel.close()
                raise CommandTimeout(f"command did not finish within {command_timeout:.0f}s")
            if on_tick is not None:
                on_tick()
            if channel.recv_ready():
                kept = stdout.add(channel.recv(32768))
                if kept and on_output is not None:
                    on_output(kept.decode("utf-8", errors="replace"))
                continue
            if channel.recv_stderr_ready():
                stderr.add(channel.recv_stderr(32768))
                continue
            # A channel the transport closed when the connection ended: no exit status
            # came (paramiko leaves -1). Waiting on it would spin (a closed channel is
            # always "ready") until the deadline named a lost host a timeout.
            if channel.closed and channel.exit_status == -1 and not self.transport.is_active():
                raise ConnectionLost(
                    "the connection to the host ended while the command ran, before its "
                    "exit status: its outcome is unknown"
                )
            # Closed by the host (a command killed by a signal sends no status): done.
            if channel.exit_status_ready() and (channel.eof_received or channel.closed):
                break
            select.select([channel], [], [], min(remaining, 0.5))
        # Drain what arrived together with the exit status.
        while channel.recv_ready():
            stdout.add(channel.recv(32768))
        while channel.recv_stderr_ready():
            stderr.add(channel.recv_stderr(32768))
        return CommandResult(
            exit_code=channel.recv_exit_status(),
            stdout=stdout.text(),
            stderr=stderr.text(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            duration=time.monotonic() - self.started,
        )


def run_command(
    endpoint: Endpoint,
    key_file: str | Path,
    command: str,
    *,
    connect_timeout: float = 10.0,
    command_timeout: float = 120.0,
    max_output: int = DEFAULT_MAX_OUTPUT,
    on_output: Callable[[str], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> CommandResult:
    """Run ``command`` (a fixed string, never built from unchecked input) on ``endpoint``.

    stdout and stderr are kept up to ``max_output`` bytes each, truncation marked.
    """
    with Session(endpoint, key_file, connect_timeout) as session:
        return session.exec(
            command,
            command_timeout=command_timeout,
            max_output=max_output,
            on_output=on_output,
            on_tick=on_tick,
            on_start=on_start,
        )
