"""The staging smoke test of an auto-patch, through the staging runner (HTTP), if configured."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from django.conf import settings

from incidents.models import AutoPatchAttempt


def smoke_test(attempt: AutoPatchAttempt) -> tuple[bool, str]:
    """(ok, detail). Without ``STAGING_RUNNER_URL`` the step is recorded as skipped."""
    if not settings.STAGING_RUNNER_URL:
        return True, "skipped: no staging runner configured (STAGING_RUNNER_URL)"
    body = json.dumps(
        {
            "agent": attempt.agent.name,
            "from_version": attempt.from_version,
            "version": attempt.target_version,
            "attempt": attempt.pk,
        }
    ).encode()
    request = urllib.request.Request(
        settings.STAGING_RUNNER_URL,
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.STAGING_TIMEOUT) as response:
            answer = json.loads(response.read(64 * 1024) or b"{}")
    except urllib.error.HTTPError as exc:
        return False, f"staging runner answered HTTP {exc.code}"
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return False, f"staging runner unreachable: {getattr(exc, 'reason', exc)}"
    except ValueError:
        return False, "staging runner answered something that is not JSON"
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        detail = answer.get("detail", "") if isinstance(answer, dict) else ""
        return False, f"smoke test failed: {str(detail)[:200]}"
    return True, f"smoke test passed: {str(answer.get('detail', ''))[:200]}"
