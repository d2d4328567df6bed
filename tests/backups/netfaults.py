"""Network faults for the backup tests: a server that accepts and never answers, and a
proxy in front of a real server that slows its answers down."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Blackhole:
    """Accepts TCP connections and never sends a byte (a hung server, a stuck load balancer)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read from, never written to

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        for conn in self.accepted:
            with contextlib.suppress(OSError):
                conn.close()


class ThrottledProxy:
    """Forwards 127.0.0.1:port to a real server; answers come at most ``rate`` bytes/s."""

    def __init__(self, host: str, port: int, *, rate: int) -> None:
        self.target = (host, port)
        self.rate = rate
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.downstream = 0  # bytes sent to clients so far
        self._closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, 0), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(server, client, self.rate), daemon=True
            ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: int) -> None:
        chunk = max(1024, rate // 20) if rate else 65536
        try:
            while not self._closed:
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    self.downstream += len(data)
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
