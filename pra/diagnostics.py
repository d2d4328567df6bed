"""Read-only diagnostics, run through the target's ``pra-diag`` forced command.

Each entry maps a name to a ``pra-diag`` argv with typed, validated
parameters. The same rules are enforced again by ``pra-diag`` on the target.
"""

from __future__ import annotations

import re
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
            "The unit's error lines over the last N minutes: err or worse, and lower-priority "
            "lines that read as errors.",
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


# --- parsing what pra-diag prints on a real host -------------------------------------
# Each parser takes the diagnostic's stdout and returns plain JSON-able data; a line it
# does not understand is kept under "unparsed" rather than dropped or raised on.

_JOURNAL_LINE = re.compile(
    r"^(?P<time>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:[+-]\d{2}:?\d{2}|Z)?)\s+"
    r"(?P<host>\S+)\s+(?P<ident>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?:\s?(?P<message>.*)$"
)


def parse_key_values(text: str, sep: str = "=") -> dict[str, str]:
    """``systemctl show`` style ``Key=Value`` (or ``key: value``) lines."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, eq, value = line.partition(sep)
        if eq and key.strip() and " " not in key.strip():
            found[key.strip()] = value.strip()
    return found


def parse_status(text: str) -> dict:
    """``status UNIT``: the is-active word, then ``systemctl show`` properties."""
    lines = text.strip().splitlines()
    state = lines[0].strip() if lines else ""
    return {"state": state, "properties": parse_key_values("\n".join(lines[1:]))}


def parse_journal(text: str) -> dict:
    """``journalctl -o short-iso(-precise)`` lines: time, host, identifier, pid, message.
    A continuation line (no timestamp) is appended to the previous entry's message."""
    entries: list[dict] = []
    notes: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("-- ") and line.rstrip().endswith(" --"):
            notes.append(line.strip("- ").strip())  # "No entries", "Boot …"
            continue
        match = _JOURNAL_LINE.match(line)
        if match:
            entry = match.groupdict()
            entry["pid"] = int(entry["pid"]) if entry["pid"] else None
            entries.append(entry)
        elif entries:
            entries[-1]["message"] += "\n" + line.strip()
        else:
            notes.append(line.strip())
    return {"entries": entries, "count": len(entries), "notes": notes}


def parse_health(text: str) -> dict:
    first = text.strip().splitlines()[0] if text.strip() else ""
    verdict, _, reasons = first.partition(":")
    return {
        "healthy": verdict.strip() == "HEALTHY",
        "reasons": [r.strip() for r in reasons.split(";") if r.strip()],
    }


def parse_container(text: str) -> dict:
    """``container NAME``: the state word, then ``key=value`` lines (started_at, …)."""
    lines = text.strip().splitlines()
    return {
        "state": lines[0].strip() if lines else "",
        **parse_key_values("\n".join(lines[1:])),
    }


def parse_sysinfo(text: str) -> dict:
    info: dict = parse_key_values(text, sep=":")
    match = re.search(r"\((\d+) s\)", info.get("uptime", ""))
    if match:
        info["uptime_seconds"] = int(match.group(1))
    if "cpus" in info and info["cpus"].isdigit():
        info["cpus"] = int(info["cpus"])
    return info


def parse_memory(text: str) -> dict:
    """``meminfo``: /proc/meminfo's ``Key: N kB`` lines (what ``free`` reads) or a
    ``free -k`` table; either way ``mem``/``swap`` rows in kB and the used percentages."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    result: dict = {}
    if lines[0].split()[:1] == ["total"]:  # free -k
        columns = lines[0].split()
        for line in lines[1:]:
            label, _, rest = line.partition(":")
            values = rest.split()
            if values and all(v.isdigit() for v in values):
                result[label.strip().lower()] = dict(zip(columns, map(int, values), strict=False))
            else:
                result.setdefault("unparsed", []).append(line)
    else:
        info = {
            key: int(value.split()[0])
            for key, value in parse_key_values(text, sep=":").items()
            if value.split() and value.split()[0].isdigit()
        }
        result["mem"] = {"total": info.get("MemTotal", 0), "available": info.get("MemAvailable", 0)}
        total, free = info.get("SwapTotal", 0), info.get("SwapFree", 0)
        result["swap"] = {"total": total, "used": total - free, "free": free}
    mem = result.get("mem", {})
    if mem.get("total"):
        available = mem.get("available", mem.get("free", 0))
        result["mem_used_percent"] = round(100 * (mem["total"] - available) / mem["total"], 1)
    swap = result.get("swap", {})
    result["swap_used_percent"] = (
        round(100 * swap.get("used", 0) / swap["total"], 1) if swap.get("total") else 0.0
    )
    return result


def parse_df(text: str) -> dict:
    """``df -P -k``: one row per filesystem (POSIX format: six columns, the mount point
    last and possibly with spaces)."""
    filesystems, unparsed = [], []
    for line in text.splitlines()[1:]:
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[1].isdigit() or not fields[4].endswith("%"):
            if line.strip():
                unparsed.append(line)
            continue
        filesystems.append(
            {
                "filesystem": fields[0],
                "size_kb": int(fields[1]),
                "used_kb": int(fields[2]),
                "available_kb": int(fields[3]),
                "used_percent": int(fields[4].rstrip("%")),
                "mounted_on": fields[5],
            }
        )
    return {"filesystems": filesystems, "unparsed": unparsed}


_PARSERS = {
    "service_status": parse_status,
    "service_logs": parse_journal,
    "analyze_errors": parse_journal,
    "service_health": parse_health,
    "container_status": parse_container,
    "system_info": parse_sysinfo,
    "memory_info": parse_memory,
    "disk_usage": parse_df,
}


def parse_output(name: str, stdout: str) -> dict | None:
    """Structured form of a diagnostic's output (None: this one is free text)."""
    parser = _PARSERS.get(name)
    return parser(stdout) if parser else None
