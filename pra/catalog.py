"""The remediation catalog: the only actions the portal can ever run.

One entry per action. The portal validates parameters with these rules, and
the target-side wrapper (rendered from this module by ``pra_render_target``)
checks them again, so the two can never disagree. Adding an action is adding
one ``ActionSpec`` to ``CATALOG``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

from pra import proxmox
from pra.choices import Impact

# Characters a parameter value may ever contain, on both sides of the wire.
SAFE_WORD = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"


class CatalogError(ValueError):
    """An unknown action or a parameter that does not pass validation."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    description: str
    pattern: str = SAFE_WORD
    max_length: int = 128

    def validate(self, value: object) -> str:
        if not isinstance(value, str):
            raise CatalogError(f"parameter {self.name!r} must be a string")
        if len(value) > self.max_length:
            raise CatalogError(f"parameter {self.name!r} is longer than {self.max_length}")
        # fullmatch and ASCII: "\n" or non-ASCII letters never slip past "$".
        if not re.fullmatch(self.pattern.strip("^$"), value, flags=re.ASCII):
            if self.pattern != SAFE_WORD:
                raise CatalogError(f"parameter {self.name!r} does not match {self.pattern}")
            raise CatalogError(
                f"parameter {self.name!r} has characters outside [a-zA-Z0-9_.-] "
                "or does not start with a letter or digit"
            )
        if ".." in value:
            raise CatalogError(f"parameter {self.name!r} may not contain '..'")
        return value


# pra-run prints this line before it runs an action: the target's own clock (µs since
# the epoch) and boot id, so the probes compare the host's state with the host's past,
# never with the portal's clock.
BEFORE_MARK = re.compile(
    r"^PRA-BEFORE time=(?P<time>[0-9]{10,17}) boot_id=(?P<boot_id>[0-9a-f-]{36})$", re.M
)


def parse_before(stdout: str) -> dict[str, str] | None:
    """``{"time": …, "boot_id": …}`` from the action's output, or None when absent."""
    match = BEFORE_MARK.search(stdout or "")
    return match.groupdict() if match else None


@dataclass(frozen=True)
class Probe:
    """A read-only diagnostic (a ``pra-diag`` command) that must succeed after the action.

    ``{param}`` placeholders take the action's parameters, ``{before_time}`` and
    ``{before_boot_id}`` the values pra-run printed before the action ran. ``within``:
    seconds the probe may keep trying while the host is away (a reboot); 0 means a few
    quick tries (PRA_VERIFY_ATTEMPTS).
    """

    diag: tuple[str, ...]
    expect: str = ""  # first line of stdout that proves success ("" = exit 0 is enough)
    within: int = 0

    @property
    def needs_before(self) -> bool:
        return any("{before_" in part for part in self.diag)

    def argv(self, params: dict[str, str], before: dict[str, str] | None = None) -> list[str]:
        values = dict(params)
        if before:
            values.update(before_time=before["time"], before_boot_id=before["boot_id"])
        return [part.format(**values) for part in self.diag]

    def matches(self, stdout: str) -> bool:
        """The first output line must be exactly ``expect`` ("inactive" is not "active")."""
        if not self.expect:
            return True
        lines = stdout.strip().splitlines()
        return bool(lines) and lines[0].strip() == self.expect


@dataclass(frozen=True)
class ActionSpec:
    name: str
    description: str
    impact: Impact
    idempotent: bool
    command: tuple[str, ...]  # argv on the target; "{param}" placeholders
    impact_note: str
    params: tuple[ParamSpec, ...] = ()
    probe: Probe | None = None
    # Read-only argv pra-run's dry run (the pre-flight) runs as root: the unit or the
    # container exists, the config parses. Exit 0 = OK; "{param}" placeholders.
    check: tuple[str, ...] = ()
    timeout: int = 120  # seconds the command may run on the target
    tags: tuple[str, ...] = field(default=())
    # Runs only inside a maintenance window (``pra.windows``); PRA_WINDOW_IMPACTS can
    # require one for whole impact levels too.
    requires_window: bool = False

    def validate_params(self, params: object) -> dict[str, str]:
        params = params or {}
        if not isinstance(params, dict):
            raise CatalogError("params must be an object")
        expected = {p.name for p in self.params}
        unknown = set(params) - expected
        if unknown:
            raise CatalogError(f"{self.name} takes no parameter {', '.join(sorted(unknown))}")
        missing = expected - set(params)
        if missing:
            raise CatalogError(f"{self.name} needs parameter {', '.join(sorted(missing))}")
        return {p.name: p.validate(params[p.name]) for p in self.params}

    def wire_command(self, params: dict[str, str]) -> str:
        """What the portal sends over SSH: ``ACTION ARG...`` (validated words only)."""
        clean = self.validate_params(params)
        return " ".join([self.name, *(clean[p.name] for p in self.params)])

    def target_argv(self, params: dict[str, str]) -> list[str]:
        clean = self.validate_params(params)
        return [part.format(**clean) for part in self.command]

    def check_argv(self, params: dict[str, str]) -> list[str]:
        clean = self.validate_params(params)
        return [part.format(**clean) for part in self.check]


_CONTAINER = ParamSpec("name", "Container name (podman)")
# Proxmox nodes (pra/proxmox.py): names as strict as PVE's own, checked again by pra-pve.
_PVE_PARAMS = (
    ParamSpec("vmid", "the guest's VMID (100-999999999)", proxmox.VMID_PATTERN, 9),
    ParamSpec(
        "archive", "vzdump file name, e.g. vzdump-lxc-110-2026_12_01-02_00_00.tar.zst",
        proxmox.ARCHIVE_PATTERN, 80,
    ),
    ParamSpec("backup_storage", "storage id holding the archive", proxmox.STORAGE_PATTERN, 64),
    ParamSpec("storage", "storage id to restore the disks onto", proxmox.STORAGE_PATTERN, 64),
)  # fmt: skip
_PVE_NOTE = (
    "Overwrites the guest holding the VMID (stopped, then backed up with vzdump first) and "
    "restarts it; the restored guest is what the archive holds."
)

CATALOG: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            name="restart_unbound",
            description="Restart the Unbound DNS resolver.",
            impact=Impact.LOW,
            idempotent=True,
            command=("systemctl", "restart", "unbound"),
            impact_note="DNS resolution pauses for about a second.",
            probe=Probe(("restarted", "unbound", "{before_time}")),
            check=("systemctl", "cat", "unbound.service"),
        ),
        ActionSpec(
            name="reload_caddy",
            description="Reload Caddy's configuration without dropping connections.",
            impact=Impact.LOW,
            idempotent=True,
            command=("systemctl", "reload", "caddy"),
            impact_note="None expected; a bad config keeps the old one running.",
            probe=Probe(("reloaded", "caddy", "{before_time}")),
            check=("systemctl", "cat", "caddy.service"),
        ),
        ActionSpec(
            name="flush_dns_cache",
            description="Flush the systemd-resolved DNS cache.",
            impact=Impact.LOW,
            idempotent=True,
            command=("resolvectl", "flush-caches"),
            impact_note="A few slower lookups while the cache refills.",
            probe=Probe(("status", "systemd-resolved"), expect="active"),
            check=("systemctl", "cat", "systemd-resolved.service"),
        ),
        ActionSpec(
            name="rotate_logs",
            description="Force a log rotation to free disk space.",
            impact=Impact.LOW,
            idempotent=True,
            command=("logrotate", "-f", "/etc/logrotate.conf"),
            impact_note="Services re-open their log files.",
            probe=None,
            check=("logrotate", "--debug", "/etc/logrotate.conf"),
        ),
        ActionSpec(
            name="restart_caddy",
            description="Restart the Caddy web server.",
            impact=Impact.MEDIUM,
            idempotent=True,
            command=("systemctl", "restart", "caddy"),
            impact_note="HTTP(S) unavailable for a few seconds; open connections drop.",
            probe=Probe(("restarted", "caddy", "{before_time}")),
            check=("systemctl", "cat", "caddy.service"),
        ),
        ActionSpec(
            name="restart_container",
            description="Restart one podman container by name.",
            impact=Impact.MEDIUM,
            idempotent=True,
            command=("podman", "restart", "{name}"),
            impact_note="The container's service is down while it restarts.",
            params=(_CONTAINER,),
            probe=Probe(("container-restarted", "{name}", "{before_time}")),
            check=("podman", "container", "exists", "{name}"),
        ),
        ActionSpec(
            name="reboot_system",
            description="Reboot the whole machine.",
            impact=Impact.HIGH,
            idempotent=False,
            command=("systemctl", "reboot"),
            impact_note="Every service on the host is down until it boots again.",
            # The boot id must change and SSH come back within the bound.
            probe=Probe(("rebooted", "{before_boot_id}"), within=300),
            timeout=60,
        ),
        ActionSpec(
            name="pve_restore",
            description="Restore a Proxmox VM or LXC from a vzdump archive under its own VMID.",
            impact=Impact.HIGH,
            idempotent=False,
            command=(
                "pra-pve",
                "restore",
                "{vmid}",
                "{archive}",
                "{backup_storage}",
                "{storage}",
                "{vmid}",
            ),  # fmt: skip
            impact_note=_PVE_NOTE,
            params=_PVE_PARAMS,
            probe=Probe(("pve-status", "{vmid}"), expect="running"),
            timeout=3600,
            tags=(proxmox.TAG,),
        ),
        ActionSpec(
            name="pve_restore_as",
            description="Restore a Proxmox VM or LXC from a vzdump archive under another VMID.",
            impact=Impact.HIGH,
            idempotent=False,
            command=(
                "pra-pve",
                "restore",
                "{vmid}",
                "{archive}",
                "{backup_storage}",
                "{storage}",
                "{target}",
            ),  # fmt: skip
            impact_note="A copy (new MAC addresses, left stopped: its IP is the original's); "
            "a guest already holding the target VMID is stopped, backed up, then overwritten.",
            params=(
                *_PVE_PARAMS,
                ParamSpec("target", "the new VMID", proxmox.VMID_PATTERN, 9),
            ),  # fmt: skip
            probe=Probe(("pve-status", "{target}"), expect="stopped"),
            timeout=3600,
            tags=(proxmox.TAG,),
        ),
    )
}


def get_spec(name: str) -> ActionSpec:
    try:
        return CATALOG[name]
    except (KeyError, TypeError):
        raise CatalogError(
            f"unknown action {name!r}; the catalog has {', '.join(sorted(CATALOG))}"
        ) from None


def catalog_fingerprint() -> str:
    """SHA-256 of the catalog as the target wrappers embed it (drift detection)."""
    data = [
        {
            "name": s.name,
            "command": list(s.command),
            "check": list(s.check),
            "params": [asdict(p) for p in s.params],
        }
        for s in sorted(CATALOG.values(), key=lambda s: s.name)
    ]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
