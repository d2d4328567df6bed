"""A small, real RFC 6455 websocket client for tests (standard library only).

It speaks to daphne over a TCP socket like any client would: HTTP upgrade with
the session cookie and an Origin, masked frames out, answers the server's pings
(daphne pings every 20 s and drops clients that do not answer), and reports a
close frame with its code.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from urllib.parse import urlsplit


class Closed(Exception):
    def __init__(self, code: int | None, reason: str = "") -> None:
        self.code = code
        super().__init__(f"websocket closed (code {code}) {reason}".strip())


class WSClient:
    def __init__(self, url: str, *, cookies: dict[str, str] | None = None, origin: str = ""):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        headers = [
            f"GET {parts.path or '/'} HTTP/1.1",
            f"Host: {parts.hostname}:{parts.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {origin or f'http://{parts.hostname}:{parts.port}'}",
        ]
        if cookies:
            headers.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in cookies.items()))
        self.sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Closed(None, "during the handshake")
            head += chunk
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n", 1)[0].decode()
        if " 101 " not in self.status_line:
            raise Closed(None, f"handshake refused: {self.status_line}")
        self.pings_answered = 0

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self.buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError from None
            if not chunk:
                raise Closed(None, "connection dropped")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, obj: object) -> None:
        self._send_frame(0x1, json.dumps(obj).encode())

    def recv_json(self, timeout: float) -> dict:
        """The next text message, answering pings meanwhile; TimeoutError if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            first, second = self._read(2, deadline)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2, deadline))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8, deadline))
            payload = self._read(length, deadline) if length else b""
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                self.pings_answered += 1
            elif opcode == 0x8:  # close
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Closed(code, payload[2:].decode(errors="replace"))
            elif opcode == 0x1:
                return json.loads(payload)

    def close(self) -> None:
        try:
            self._send_frame(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()
