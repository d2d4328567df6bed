"""The portal side of the VM tier: the guest registered as a host, and the real stack
(daphne + an RQ worker as subprocesses, on this test's PostgreSQL and Redis) driven
through the JSON API as an operator and an approver would."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings as django_settings
from django.core.management import call_command

from portal.lib import ssh
from portal.tokens import create_token
from pra.models import Host, PRAAction
from tests.stack import LiveStack, stack_env, wait_for

RATIONALE = "VM tier: exercising this catalog action against a real systemd host."
# An SSH handshake with a guest under software emulation takes ~0.2 s on an idle machine
# and 19-59 s was seen at load 25: the portal's default (10 s) would call it unreachable.
# It also bounds each probe of a rebooting guest (QEMU accepts the TCP connection while
# the guest is down, and the handshake waits): reboot_system's verdict takes about this
# long plus the boot.
CONNECT_TIMEOUT = 45
DIAG_TIMEOUT = 300  # a `systemctl show` took 59 s on the guest with the machine at load 25
FINAL = {"COMPLETED", "FAILED", "REJECTED", "EXPIRED", "VOIDED"}


def pin_vm(vm, keys, settings, name: str = "vm-1") -> tuple[Host, str]:
    """``pra_host add`` with the fingerprint read off the guest's console; the portal's
    key settings point at the keys rendered into the guest."""
    settings.PRA_SSH_KEY_FILE = keys.exec_key
    settings.PRA_DIAG_SSH_KEY_FILE = keys.diag_key
    settings.PRA_RETRY_BACKOFF = 0.2
    settings.PRA_CONNECT_TIMEOUT = CONNECT_TIMEOUT
    settings.PRA_DIAG_TIMEOUT = DIAG_TIMEOUT
    out = io.StringIO()
    call_command(
        "pra_host", "add", name, "127.0.0.1", "--port", str(vm.ssh_port), "--user", "pra",
        "--fingerprint", ssh.fingerprint(vm.host_key), stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    return Host.objects.get(name=name), out.getvalue()


def portal_env(keys, log_dir: Path) -> dict[str, str]:
    return stack_env(
        PRA_SSH_KEY_FILE=str(keys.exec_key),
        PRA_DIAG_SSH_KEY_FILE=str(keys.diag_key),
        DEBUG="1",
        SECRET_KEY=django_settings.SECRET_KEY,
        PORTAL_VAR_DIR=str(log_dir / "var"),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="0",
        STATIC_MANIFEST="0",
        DB_CONN_MAX_AGE="0",
        PRA_RETRY_BACKOFF_MS="200",
        PRA_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
        PRA_DIAG_TIMEOUT=str(DIAG_TIMEOUT),
        PYTHONUNBUFFERED="1",
    )


@dataclass
class Portal:
    """A running daphne + worker, and bearer tokens of an operator and two approvers."""

    stack: LiveStack
    operator: str
    approvers: tuple[str, ...]
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    def call(self, method: str, path: str, token: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(  # noqa: S310 (http://127.0.0.1 of this test)
            self.stack.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def propose(self, action: str, host: str, params: dict | None = None) -> dict:
        return self.call(
            "POST",
            "/api/pra/actions",
            self.operator,
            {"action": action, "host": host, "params": params or {}, "rationale": RATIONALE},
        )

    def approve(self, proposed: dict, host: str) -> dict:
        """As many approvers sign as the action's impact needs (HIGH: two, the host typed)."""
        body = {"fingerprint": proposed["fingerprint"]}
        if proposed["impact"] == "HIGH":
            body["confirmation"] = host
        path = f"/api/pra/actions/{proposed['id']}/approve"
        needed = proposed["approvals_required"]
        assert 1 <= needed <= len(self.approvers), proposed
        answer: dict = {}
        for token in self.approvers[:needed]:
            answer = self.call("POST", path, token, body)
        assert answer["status"] != "PROPOSED", answer
        return answer

    def wait_preflight(self, action_id: int, timeout: float = 400) -> PRAAction:
        wait_for(
            lambda: PRAAction.objects.get(pk=action_id).preflight_status != "PENDING",
            timeout,
            f"the pre-flight of action {action_id}",
        )
        return PRAAction.objects.get(pk=action_id)

    def wait_final(self, action_id: int, timeout: float) -> PRAAction:
        def done() -> bool:
            obj = PRAAction.objects.get(pk=action_id)
            return obj.status in FINAL and (
                obj.status != "COMPLETED" or obj.verification != "PENDING"
            )

        wait_for(done, timeout, f"action {action_id} to end (and be verified)")
        return PRAAction.objects.get(pk=action_id)

    def run(
        self, action: str, host: str, params: dict | None = None, *, timeout: float = 900
    ) -> PRAAction:
        """Propose, wait for the pre-flight, approve, wait for the verdict; records timings."""
        started = time.monotonic()
        proposed = self.propose(action, host, params)
        checked = self.wait_preflight(proposed["id"])
        preflight_s = time.monotonic() - started
        assert checked.preflight_status == "OK", (
            checked.preflight_status,
            checked.preflight_output,
        )
        approved_at = time.monotonic()
        self.approve(proposed, host)
        final = self.wait_final(proposed["id"], timeout)
        done = time.monotonic()
        self.timings[action] = {
            "preflight_s": round(preflight_s, 2),
            "approve_to_verdict_s": round(done - approved_at, 2),
        }
        return final


def make_portal(stack: LiveStack, operator, *approvers) -> Portal:
    _, op_token = create_token(operator, "vm tier")
    tokens = tuple(create_token(approver, "vm tier")[1] for approver in approvers)
    return Portal(stack, op_token, tokens)
