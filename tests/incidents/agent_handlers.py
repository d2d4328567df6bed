"""Command handlers for the reference agent in the end-to-end tests (``--handler``)."""


def fixing(agent, command):
    """The new version really fixes the webhooks."""
    payload = command.get("payload") or {}
    if command.get("kind") in ("update", "rollback"):
        agent.version = payload["version"]
        agent.extra["webhook_fail_rate"] = 0.0 if command["kind"] == "update" else 0.1
        return True, f"{command['kind']} to {agent.version}"
    return False, "unsupported"


def stuck(agent, command):
    """Acks the update but never comes up on the new version (e.g. a failed restart)."""
    if command.get("kind") == "update":
        return True, "update scheduled"
    if command.get("kind") == "rollback":
        agent.version = (command.get("payload") or {}).get("version", agent.version)
        return True, f"rolled back to {agent.version}"
    return False, "unsupported"
