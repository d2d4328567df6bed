"""``portal.lib.secretbox``: secrets sealed at rest, readable only for their purpose and
under the SECRET_KEY that sealed them."""

from __future__ import annotations

from portal.lib.secretbox import seal, unseal


def test_a_sealed_secret_reads_back_for_its_purpose_only():
    sealed = seal("agent-secret-123", purpose="agent-hmac")
    assert "agent-secret-123" not in sealed
    assert unseal(sealed, purpose="agent-hmac") == "agent-secret-123"
    assert unseal(sealed, purpose="something-else") is None


def test_sealing_twice_gives_different_texts():
    assert seal("same", purpose="p") != seal("same", purpose="p")


def test_a_new_secret_key_makes_old_seals_unreadable(settings):
    sealed = seal("before rotation", purpose="p")
    settings.SECRET_KEY = "another-secret-key-" + "x" * 40
    assert unseal(sealed, purpose="p") is None


def test_garbage_is_not_a_secret():
    for junk in ("", "not-a-token", "gAAAAA" + "A" * 80, "\u00e9t\u00e9"):
        assert unseal(junk, purpose="p") is None
