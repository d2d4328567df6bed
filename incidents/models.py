"""Incident models: agents, heartbeats, incidents (built by the incidents issue)."""
