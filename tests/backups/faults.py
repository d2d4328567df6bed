"""Real network and file-system instruments for the restore security and fault tests.

- ``FakePostgres``: a loopback TCP server speaking just enough of the
  PostgreSQL wire protocol to ask for a cleartext password (what a hostile
  server does), recording every byte it receives.
- ``CuttingProxy``: a TCP proxy that cuts one connection once the client has
  sent a given number of bytes through it (a connection killed mid-transfer).
- ``OpenWatch``: the kernel's own record (inotify) of every open or read of a
  file, to prove a refused file was never read.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


def _recv_exact(conn: socket.socket, size: int, sink: bytearray) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        sink.extend(chunk)
        data += chunk
    return data


class FakePostgres:
    """Accepts connections on 127.0.0.1, asks each for a cleartext password, then refuses."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        sink = bytearray()
        try:
            conn.settimeout(10)
            while True:  # SSL / GSS requests first, then the startup message
                length = struct.unpack("!i", _recv_exact(conn, 4, sink))[0]
                body = _recv_exact(conn, length - 4, sink)
                code = struct.unpack("!i", body[:4])[0]
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    conn.sendall(b"N")
                    continue
                break
            conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            _recv_exact(conn, 1, sink)
            length = struct.unpack("!i", _recv_exact(conn, 4, sink))[0]
            _recv_exact(conn, length - 4, sink)
            with self._lock:  # recorded before the refusal: a client told "no" sees it here
                self.received.extend(sink)
                sink.clear()
            fields = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
            conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
        except (OSError, ConnectionError, struct.error):
            pass
        finally:
            with self._lock:
                self.received.extend(sink)
            conn.close()

    @property
    def dsn(self) -> str:
        return f"postgres://portal@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stop = True
        self._sock.close()


class CuttingProxy:
    """Forwards 127.0.0.1:port to a server; cuts the first connection whose client has sent
    more than ``cut_after`` bytes (both directions closed at once, mid-stream)."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"sent": 0, "cut": False}
            threading.Thread(
                target=self._pump, args=(client, upstream, state, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, state, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, counted: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counted:
                    state["sent"] += len(data)
                    with self._lock:
                        cut = not self.cuts and state["sent"] > self.cut_after
                        if cut:
                            self.cuts += 1
                    if cut:
                        # Half a command reaches the server, then the link dies.
                        dst.sendall(data[: len(data) // 2])
                        state["cut"] = True
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self) -> None:
        self._sock.close()


IN_ACCESS = 0x00000001
IN_OPEN = 0x00000020


class OpenWatch:
    """Counts the kernel's open/read events on one file (inotify)."""

    def __init__(self, path: os.PathLike | str) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        wd = self._libc.inotify_add_watch(
            self.fd, os.fsencode(os.fspath(path)), IN_OPEN | IN_ACCESS
        )
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def events(self) -> int:
        count = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                offset += 16 + length
                count += 1

    def close(self) -> None:
        os.close(self.fd)
