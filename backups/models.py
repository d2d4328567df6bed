"""Backup models: sources, runs, artifacts (built by the backups issue)."""
