"""Backups' MCP tool (read-only): is every source's last good backup fresh?

Registered from ``BackupsConfig.ready()``; served by ``portal.mcp``. Restores are
never started from here: they need a plan, a confirmation and two approvers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from django.utils import timezone
from pydantic import BaseModel, Field

from backups.models import BackupRun, BackupSource
from portal.mcp.core import READ_ONLY, Call, ToolError, require_view, run, tool


class BackupSourceStatus(BaseModel):
    """The newest stored backup of one source, and whether it is fresh and verified."""

    source: str
    kind: str
    last_success: datetime | None
    age_hours: float | None
    size_bytes: int | None
    verification: str | None
    fresh: bool = Field(description="Verified and newer than BACKUP_FRESH_HOURS.")
    last_run_status: str | None = Field(description="Status of the most recent run, any outcome.")


def _backup_status(call: Call, source: str | None) -> list[dict]:
    require_view(call)
    sources = BackupSource.objects.filter(enabled=True).order_by("name")
    if source:
        sources = sources.filter(name=source)
        if not sources:
            raise ToolError(f"No enabled backup source {source!r}; omit it to list all.")
    now = timezone.now()
    out = []
    for src in sources:
        runs = BackupRun.objects.of_source(src)
        latest = runs.order_by("-created").first()
        good = runs.last_good()  # the one definition of "the last good backup"
        out.append(
            {
                "source": src.name,
                "kind": src.kind,
                "last_success": good.created if good else None,
                "age_hours": round((now - good.created).total_seconds() / 3600, 1)
                if good else None,
                "size_bytes": good.bytes_stored if good else None,
                "verification": good.verification if good else None,
                "fresh": bool(good and good.is_fresh(now)),
                "last_run_status": latest.status if latest else None,
            }
        )  # fmt: skip
    return out


@tool(annotations=READ_ONLY)
async def backup_status(
    source: Annotated[str | None, Field(max_length=63, description="Only this source.")] = None,
) -> list[BackupSourceStatus]:
    """Backup freshness per source: last successful backup, its age, size and verification.

    A source with fresh=false needs attention (no recent verified backup). Restores
    are never started from here: they need a plan, a confirmation and two approvers
    in the portal.
    """
    return await run(_backup_status, source)
