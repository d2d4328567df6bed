"""Read-only diagnostics, run through the target's ``pra-diag`` forced command.

Each entry maps a name to a ``pra-diag`` argv with typed, validated
parameters. The same rules are enforced again by ``pra-diag`` on the target.
"""

from __future__ import annotations

from dataclasses import dataclass

from pra import proxmox
from pra.catalog import SAFE_WORD, CatalogError, ParamSpec


@dataclass(frozen=True)
class IntParam:
    name: str
    description: str
    minimum: int
    maximum: int
    default: int

    def validate(self, value: object) -> str:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise CatalogError(f"parameter {self.name!r} must be an integer")
        try:
            number = int(value)
        except ValueError:
            raise CatalogError(f"parameter {self.name!r} must be an integer") from None
        if not self.minimum <= number <= self.maximum:
            raise CatalogError(
                f"parameter {self.name!r} must be between {self.minimum} and {self.maximum}"
            )
        return str(number)


@dataclass(frozen=True)
class Diagnostic:
    name: str
    description: str
    verb: str
    params: tuple[ParamSpec | IntParam, ...] = ()

    def argv(self, params: dict | None) -> list[str]:
        params = dict(params or {})
        if not isinstance(params, dict):
            raise CatalogError("params must be an object")
        unknown = set(params) - {p.name for p in self.params}
        if unknown:
            raise CatalogError(f"{self.name} takes no parameter {', '.join(sorted(unknown))}")
        words = [self.verb]
        for spec in self.params:
            if spec.name not in params:
                if isinstance(spec, IntParam):
                    params[spec.name] = spec.default
                else:
                    raise CatalogError(f"{self.name} needs parameter {spec.name}")
            words.append(spec.validate(params[spec.name]))
        return words


_UNIT = ParamSpec("unit", "systemd unit name, e.g. unbound", SAFE_WORD)

DIAGNOSTICS: dict[str, Diagnostic] = {
    d.name: d
    for d in (
        Diagnostic(
            "service_status", "Is the unit active? (systemctl is-active)", "status", (_UNIT,)
        ),
        Diagnostic(
            "service_logs",
            "Last N lines of the unit's journal.",
            "logs",
            (_UNIT, IntParam("lines", "lines to show", 1, 5000, 100)),
        ),
        Diagnostic(
            "analyze_errors",
            "Error-level journal lines of the unit over the last N minutes.",
            "errors",
            (_UNIT, IntParam("minutes", "time window in minutes", 1, 1440, 60)),
        ),
        Diagnostic(
            "service_health",
            "HEALTHY or UNHEALTHY with reasons (active state, recent errors).",
            "health",
            (_UNIT,),
        ),
        Diagnostic(
            "container_status",
            "State of a podman container.",
            "container",
            (ParamSpec("name", "container name"),),
        ),
        Diagnostic("system_info", "Hostname, kernel, uptime and load.", "sysinfo"),
        Diagnostic("memory_info", "Memory and swap use.", "meminfo"),
        Diagnostic("disk_usage", "Filesystem usage (df).", "disk"),
        Diagnostic(
            proxmox.BACKUPS_DIAGNOSTIC,
            "Proxmox: the node's vzdump backups on a storage (pvesh JSON).",
            proxmox.BACKUPS_VERB,
            (ParamSpec("storage", "storage id, e.g. local", proxmox.STORAGE_PATTERN, 64),),
        ),
        Diagnostic(
            "pve_guest_status",
            "Proxmox: a guest's status (running, stopped, missing).",
            "pve-status",
            (ParamSpec("vmid", "the guest's VMID", proxmox.VMID_PATTERN, 9),),
        ),
        Diagnostic(
            "test_connectivity",
            "Can the host open a TCP connection to HOST:PORT?",
            "connectivity",
            (
                ParamSpec("target", "host name or IPv4 address to reach"),
                IntParam("port", "TCP port", 1, 65535, 443),
            ),
        ),
    )
}


def get_diagnostic(name: str) -> Diagnostic:
    try:
        return DIAGNOSTICS[name]
    except (KeyError, TypeError):
        raise CatalogError(
            f"unknown diagnostic {name!r}; available: {', '.join(sorted(DIAGNOSTICS))}"
        ) from None
