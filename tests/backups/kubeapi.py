"""A stand-in Kubernetes API server for the backup tests.

No Kubernetes cluster can run on this machine (no container runtime, no
kubelet), so the Kubernetes tests drive the real ``kubectl`` against this small
HTTP server instead. It implements only what kubectl needs for our backups and
restores: legacy discovery (``/api``, ``/apis``, ``/api/v1``, ``/apis/G/V``),
list and get of namespaced resources (one namespace or all), and server-side
apply (``PATCH`` with ``application/apply-patch+yaml``, honouring
``dryRun=All``), and ``pods/exec`` over WebSocket (``v5.channel.k8s.io``):
the "pod" is this machine, so an exec runs the command here with the pod's
``exec_env``. Objects live in memory; ``requests`` records every call so
tests can see, e.g., that the dry run came before the real apply.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import struct
import subprocess
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml


@dataclass(frozen=True)
class Res:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    short: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = [
    Res("", "v1", "pods", "Pod", "pod", ("po",), ("all",)),
    Res("", "v1", "services", "Service", "service", ("svc",), ("all",)),
    Res("", "v1", "configmaps", "ConfigMap", "configmap", ("cm",)),
    Res("", "v1", "secrets", "Secret", "secret"),
    Res("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", "persistentvolumeclaim",
        ("pvc",)),
    Res("apps", "v1", "deployments", "Deployment", "deployment", ("deploy",), ("all",)),
    Res("apps", "v1", "replicasets", "ReplicaSet", "replicaset", ("rs",), ("all",)),
    Res("apps", "v1", "statefulsets", "StatefulSet", "statefulset", ("sts",), ("all",)),
    Res("apps", "v1", "daemonsets", "DaemonSet", "daemonset", ("ds",), ("all",)),
    Res("batch", "v1", "jobs", "Job", "job", (), ("all",)),
    Res("batch", "v1", "cronjobs", "CronJob", "cronjob", ("cj",), ("all",)),
    Res("networking.k8s.io", "v1", "ingresses", "Ingress", "ingress", ("ing",)),
]  # fmt: skip
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resource_list(group_version: str) -> dict:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": True,
                "kind": r.kind,
                "verbs": VERBS,
                "shortNames": list(r.short),
                "categories": list(r.categories),
            }
            for r in RESOURCES
            if r.group_version == group_version
        ],
    }


def _groups() -> dict:
    groups: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group:
            groups.setdefault(r.group, [])
            if r.version not in groups[r.group]:
                groups[r.group].append(r.version)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": name,
                "versions": [{"groupVersion": f"{name}/{v}", "version": v} for v in versions],
                "preferredVersion": {
                    "groupVersion": f"{name}/{versions[0]}",
                    "version": versions[0],
                },
            }
            for name, versions in groups.items()
        ],
    }


class _JSONHandler(BaseHTTPRequestHandler):
    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeKubeAPI:
    """The stand-in server: ``objects`` maps (plural, namespace, name) to an object."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.exec_env: dict[str, str] = {}
        self.execs: list[list[str]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._version = 100

    # --- fixtures -------------------------------------------------------------
    def add(self, plural: str, namespace: str, name: str, **fields) -> dict:
        res = self.resource(plural)
        obj = {
            "apiVersion": res.group_version,
            "kind": res.kind,
            "metadata": {"name": name, "namespace": namespace, **fields.pop("metadata", {})},
            **fields,
        }
        self._stamp(obj)
        self.objects[(plural, namespace, name)] = obj
        return obj

    def _stamp(self, obj: dict) -> None:
        self._version += 1
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["resourceVersion"] = str(self._version)

    @staticmethod
    def resource(plural: str) -> Res:
        return next(r for r in RESOURCES if r.plural == plural)

    # --- server ---------------------------------------------------------------
    def start(self) -> FakeKubeAPI:
        api = self

        class Handler(_JSONHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                return

            def do_GET(self):
                api.requests.append(("GET", self.path))
                parts = urlsplit(self.path)
                if parts.path.endswith("/exec") and self.headers.get("Upgrade"):
                    api.handle_exec(self, parse_qs(parts.query))
                    return
                code, body = api.handle_get(parts.path)
                self._send(code, body)

            def do_POST(self):
                self.do_GET()

            def do_PATCH(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                api.requests.append(("PATCH", self.path))
                parts = urlsplit(self.path)
                code, body = api.handle_apply(
                    parts.path, parse_qs(parts.query), raw, self.headers.get("Content-Type", "")
                )
                self._send(code, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, context: str = "standin") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [{"name": context, "context": {"cluster": "standin", "user": "standin"}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # --- request handling -------------------------------------------------------
    @staticmethod
    def _split(path: str):
        """'/api/v1/namespaces/ns/configmaps/x' -> (group_version, namespace, plural, name)."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"]:
            gv, rest = parts[1] if len(parts) > 1 else "", parts[2:]
        elif parts[:1] == ["apis"]:
            gv = "/".join(parts[1:3]) if len(parts) > 2 else ""
            rest = parts[3:]
        else:
            return None
        namespace = ""
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural = rest[0] if rest else ""
        name = rest[1] if len(rest) > 1 else ""
        return gv, namespace, plural, name

    def handle_get(self, path: str) -> tuple[int, dict]:
        if path == "/api":
            return 200, {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [],
            }
        if path == "/apis":
            return 200, _groups()
        if path == "/version":
            return 200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-standin"}
        split = self._split(path)
        if split is None:
            return 404, _status(404, f"{path} not found")
        gv, namespace, plural, name = split
        if not plural:
            listing = _resource_list(gv)
            return (200, listing) if listing["resources"] else (404, _status(404, "no group"))
        res = next((r for r in RESOURCES if r.plural == plural and r.group_version == gv), None)
        if res is None:
            return 404, _status(404, f"the server could not find the requested resource {plural}")
        with self.lock:
            if name:
                obj = self.objects.get((plural, namespace, name))
                if obj is None:
                    return 404, _status(404, f'{plural} "{name}" not found')
                return 200, copy.deepcopy(obj)
            items = [
                copy.deepcopy(o)
                for (p, ns, _), o in sorted(self.objects.items())
                if p == plural and (not namespace or ns == namespace)
            ]
        return 200, {
            "kind": f"{res.kind}List",
            "apiVersion": res.group_version,
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    def handle_exec(self, handler: _JSONHandler, query: dict) -> None:
        """kubectl exec over WebSocket, channel protocol v5: 0 stdin, 1 stdout, 2 stderr,
        3 status, 255 close (of stdin). The command runs on this machine."""
        protocols = [
            p.strip() for p in handler.headers.get("Sec-WebSocket-Protocol", "").split(",")
        ]
        if "v5.channel.k8s.io" not in protocols:
            handler._send(400, _status(400, "only v5.channel.k8s.io is implemented"))
            return
        key = handler.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(
            hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode(), usedforsecurity=False
            ).digest()  # the WebSocket handshake (RFC 6455) is defined with SHA-1
        ).decode()
        handler.send_response(101)
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept)
        handler.send_header("Sec-WebSocket-Protocol", "v5.channel.k8s.io")
        handler.end_headers()
        handler.wfile.flush()
        command = query.get("command", [])
        self.execs.append(command)
        sock = handler.connection
        write_lock = threading.Lock()

        def send(opcode: int, payload: bytes) -> None:
            header = bytes([0x80 | opcode])
            n = len(payload)
            if n < 126:
                header += bytes([n])
            elif n < 65536:
                header += bytes([126]) + struct.pack(">H", n)
            else:
                header += bytes([127]) + struct.pack(">Q", n)
            with write_lock:
                sock.sendall(header + payload)

        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **self.exec_env},
        )

        def pump(stream, channel: int) -> None:
            while data := stream.read1(65536):
                send(0x2, bytes([channel]) + data)

        pumps = [
            threading.Thread(target=pump, args=(proc.stdout, 1), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, 2), daemon=True),
        ]
        for t in pumps:
            t.start()
        threading.Thread(target=_read_frames, args=(handler.rfile, proc, send), daemon=True).start()
        code = proc.wait()
        for t in pumps:
            t.join()
        status = {"metadata": {}, "status": "Success"}
        if code != 0:
            status = {
                "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                "message": f"command terminated with non-zero exit code: {code}",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }  # fmt: skip
        send(0x2, bytes([3]) + json.dumps(status).encode())
        send(0x8, struct.pack(">H", 1000))
        handler.close_connection = True

    def handle_apply(self, path, query, raw: bytes, content_type: str) -> tuple[int, dict]:
        split = self._split(path)
        if split is None or "apply-patch" not in content_type:
            return 415, _status(415, "only server-side apply is implemented")
        gv, namespace, plural, name = split
        res = next((r for r in RESOURCES if r.plural == plural and r.group_version == gv), None)
        if res is None or not name:
            return 404, _status(404, "not found")
        body = yaml.safe_load(raw)
        if body.get("kind") != res.kind or body.get("metadata", {}).get("name") != name:
            return 400, _status(400, "body does not match the URL")
        body.setdefault("metadata", {})["namespace"] = namespace
        with self.lock:
            existing = self.objects.get((plural, namespace, name))
            merged = copy.deepcopy(body)
            if existing is not None:
                merged["metadata"]["uid"] = existing["metadata"]["uid"]
            self._stamp(merged)
            if query.get("dryRun") != ["All"]:
                self.objects[(plural, namespace, name)] = merged
        return (200 if existing is not None else 201), merged


def _read_frames(rfile, proc: subprocess.Popen, send) -> None:
    """Client → server frames (masked): stdin data on channel 0, 255 closes stdin."""
    try:
        while True:
            head = rfile.read(2)
            if len(head) < 2:
                break
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", rfile.read(8))[0]
            mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(rfile.read(length)))
            if opcode == 0x8:
                break
            if opcode == 0x9:
                send(0xA, payload)
                continue
            if not payload:
                continue
            if payload[0] == 0 and proc.stdin and not proc.stdin.closed:
                proc.stdin.write(payload[1:])
                proc.stdin.flush()
            elif payload[0] == 255 and proc.stdin:
                proc.stdin.close()
    except (OSError, ValueError):
        pass
    finally:
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass


def _status(code: int, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "code": code}  # fmt: skip
