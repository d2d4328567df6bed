"""Disk usage of watched paths, and what fills them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    path: str
    percent: float
    total: int
    free: int


def usage(path: str | Path) -> Usage:
    """Used share of the filesystem holding ``path``, as ``df`` shows it (reserved blocks count)."""
    stats = os.statvfs(path)
    total = stats.f_blocks * stats.f_frsize
    free_for_users = stats.f_bavail * stats.f_frsize
    used = total - stats.f_bfree * stats.f_frsize
    percent = 100.0 * used / (used + free_for_users) if used + free_for_users else 0.0
    return Usage(str(path), round(percent, 1), total, free_for_users)


def _tree_size(path: Path, device: int) -> int:
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if info.st_dev != device:
                        continue  # another filesystem mounted below: not ours to count
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        total += info.st_blocks * 512
        except OSError:
            continue
    return total


def largest_consumers(path: str | Path, limit: int = 5) -> list[tuple[str, int]]:
    """The biggest entries directly under ``path`` (directories counted whole), biggest first."""
    root = Path(path)
    device = root.stat().st_dev
    sizes = []
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_dev != device:
                continue
            if entry.is_dir(follow_symlinks=False):
                size = _tree_size(Path(entry.path), device)
            else:
                size = info.st_blocks * 512
            sizes.append((entry.path, size))
    sizes.sort(key=lambda item: item[1], reverse=True)
    return sizes[:limit]
