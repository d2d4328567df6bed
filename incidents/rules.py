"""Rule evaluation on ingest: pure functions over telemetry, rules cached briefly."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from incidents.choices import RuleKind, Severity
from incidents.models import DetectionRule

# Defaults from the runbook (seed 001) and the self-healing document (seed 002).
DEFAULT_RULES: list[dict[str, Any]] = [
    {"key": "errors", "kind": RuleKind.ERROR_SPIKE, "metric": "errors_last_24h",
     "warning": 50, "critical": 200, "description": "Errors in the last 24 h"},
    {"key": "webhooks", "kind": RuleKind.WEBHOOK_FAILURE, "metric": "webhook_fail_rate",
     "warning": 0.05, "critical": 0.20, "description": "Webhook failure rate (0..1)"},
    {"key": "heartbeat", "kind": RuleKind.MISSED_HEARTBEAT, "metric": "",
     "warning": None, "critical": None, "description": "No heartbeat within period + grace"},
    {"key": "response-time", "kind": RuleKind.METRIC_THRESHOLD, "metric": "response_time_ms",
     "warning": 100, "critical": 200, "description": "Response time (ms)"},
    {"key": "cpu", "kind": RuleKind.METRIC_THRESHOLD, "metric": "cpu_pct",
     "warning": 80, "critical": 90, "description": "CPU use (%)"},
    {"key": "memory", "kind": RuleKind.METRIC_THRESHOLD, "metric": "mem_pct",
     "warning": 80, "critical": 90, "description": "Memory use (%)"},
    {"key": "disk", "kind": RuleKind.METRIC_THRESHOLD, "metric": "disk_pct",
     "warning": 75, "critical": 90, "description": "Disk use (%)"},
    {"key": "service-down", "kind": RuleKind.SERVICE_DOWN, "metric": "services",
     "warning": None, "critical": None, "description": "A service the agent watches is down"},
]  # fmt: skip


@dataclass(frozen=True)
class Violation:
    """A rule broken by one heartbeat; ``cause`` identifies the incident it feeds."""

    rule_id: int | None
    cause: str
    level: str  # "warning" | "critical"
    title: str
    value: object


_cache: tuple[float, list[DetectionRule]] = (0.0, [])
CACHE_SECONDS = 10.0


def active_rules() -> list[DetectionRule]:
    """Enabled rules, re-read at most every 10 s (they are edited rarely, read per heartbeat)."""
    global _cache
    loaded_at, rules = _cache
    if time.monotonic() - loaded_at > CACHE_SECONDS:
        rules = list(DetectionRule.objects.filter(enabled=True))
        _cache = (time.monotonic(), rules)
    return rules


def forget_cached_rules() -> None:
    global _cache
    _cache = (0.0, [])


def severity_for(level: str, environment: str) -> int:
    base = Severity.HIGH if level == "critical" else Severity.MEDIUM
    if environment == "production" and level == "critical":
        return Severity.CRITICAL
    return int(base)


def evaluate(telemetry: dict, rules: list[DetectionRule]) -> list[Violation]:
    """Every rule the telemetry breaks (missed heartbeats are found by the sweep instead)."""
    found: list[Violation] = []
    for rule in rules:
        if rule.kind == RuleKind.MISSED_HEARTBEAT:
            continue
        if rule.kind == RuleKind.SERVICE_DOWN:
            services = telemetry.get("services") or {}
            for name, state in sorted(services.items()):
                if state not in ("active", "running", "ok"):
                    found.append(
                        Violation(
                            rule.pk, f"service:{name}", "critical", f"{name} is {state}", state
                        )
                    )
            continue
        value = telemetry.get(rule.metric)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if rule.critical is not None and value > rule.critical:
            level = "critical"
        elif rule.warning is not None and value > rule.warning:
            level = "warning"
        else:
            continue
        title = f"{rule.description or rule.metric} at {value:g} (> {level} threshold)"
        found.append(Violation(rule.pk, rule.key, level, title, value))
    return found


def covered_causes(telemetry: dict, rules: list[DetectionRule]) -> set[str]:
    """Causes this heartbeat says something about (so their incidents may auto-resolve)."""
    causes = set()
    for rule in rules:
        if rule.kind == RuleKind.SERVICE_DOWN:
            causes |= {f"service:{name}" for name in (telemetry.get("services") or {})}
        elif rule.kind != RuleKind.MISSED_HEARTBEAT and rule.metric in telemetry:
            causes.add(rule.key)
    return causes
