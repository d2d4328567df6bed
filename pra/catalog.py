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
            raise CatalogError(
                f"parameter {self.name!r} has characters outside [a-zA-Z0-9_.-] "
                "or does not start with a letter or digit"
            )
        if ".." in value:
            raise CatalogError(f"parameter {self.name!r} may not contain '..'")
        return value


@dataclass(frozen=True)
class Probe:
    """A read-only diagnostic (a ``pra-diag`` command) that must succeed after the action."""

    diag: tuple[str, ...]
    expect: str = ""  # first line of stdout that proves success ("" = exit 0 is enough)

    def argv(self, params: dict[str, str]) -> list[str]:
        return [part.format(**params) for part in self.diag]

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
    timeout: int = 120  # seconds the command may run on the target
    tags: tuple[str, ...] = field(default=())

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


_CONTAINER = ParamSpec("name", "Container name (podman)")

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
            probe=Probe(("status", "unbound"), expect="active"),
        ),
        ActionSpec(
            name="reload_caddy",
            description="Reload Caddy's configuration without dropping connections.",
            impact=Impact.LOW,
            idempotent=True,
            command=("systemctl", "reload", "caddy"),
            impact_note="None expected; a bad config keeps the old one running.",
            probe=Probe(("status", "caddy"), expect="active"),
        ),
        ActionSpec(
            name="flush_dns_cache",
            description="Flush the systemd-resolved DNS cache.",
            impact=Impact.LOW,
            idempotent=True,
            command=("resolvectl", "flush-caches"),
            impact_note="A few slower lookups while the cache refills.",
            probe=Probe(("status", "systemd-resolved"), expect="active"),
        ),
        ActionSpec(
            name="rotate_logs",
            description="Force a log rotation to free disk space.",
            impact=Impact.LOW,
            idempotent=True,
            command=("logrotate", "-f", "/etc/logrotate.conf"),
            impact_note="Services re-open their log files.",
            probe=None,
        ),
        ActionSpec(
            name="restart_caddy",
            description="Restart the Caddy web server.",
            impact=Impact.MEDIUM,
            idempotent=True,
            command=("systemctl", "restart", "caddy"),
            impact_note="HTTP(S) unavailable for a few seconds; open connections drop.",
            probe=Probe(("status", "caddy"), expect="active"),
        ),
        ActionSpec(
            name="restart_container",
            description="Restart one podman container by name.",
            impact=Impact.MEDIUM,
            idempotent=True,
            command=("podman", "restart", "{name}"),
            impact_note="The container's service is down while it restarts.",
            params=(_CONTAINER,),
            probe=Probe(("container", "{name}"), expect="running"),
        ),
        ActionSpec(
            name="reboot_system",
            description="Reboot the whole machine.",
            impact=Impact.HIGH,
            idempotent=False,
            command=("systemctl", "reboot"),
            impact_note="Every service on the host is down until it boots again.",
            probe=Probe(("sysinfo",)),
            timeout=60,
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
            "params": [asdict(p) for p in s.params],
        }
        for s in sorted(CATALOG.values(), key=lambda s: s.name)
    ]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
