import pytest

from pra.catalog import CATALOG, CatalogError, catalog_fingerprint, get_spec
from pra.choices import Impact

INJECTIONS = [
    "x; rm -rf /",
    "$(id)",
    "`id`",
    "a\nb",
    "a\rb",
    "../etc",
    "a..b",
    "-rf",
    "a" * 129,
    "é",
    "ｗeb",  # fullwidth letter
    "web 1",
    'x"',
    "x'",
    "x|y",
    "x&y",
    "",
    "x\x00",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_it_refuses_injection_in_container_names(value):
    with pytest.raises(CatalogError):
        get_spec("restart_container").wire_command({"name": value})


@pytest.mark.parametrize("value", ["web-1", "db_2", "a", "Caddy.v2", "x" * 128])
def test_it_accepts_plain_container_names(value):
    assert (
        get_spec("restart_container").wire_command({"name": value}) == f"restart_container {value}"
    )


def test_it_refuses_unknown_actions_and_parameters():
    with pytest.raises(CatalogError, match="unknown action"):
        get_spec("rm_rf")
    with pytest.raises(CatalogError, match="takes no parameter"):
        get_spec("restart_unbound").validate_params({"unit": "x"})
    with pytest.raises(CatalogError, match="needs parameter name"):
        get_spec("restart_container").validate_params({})
    with pytest.raises(CatalogError, match="must be a string"):
        get_spec("restart_container").validate_params({"name": 5})


def test_catalog_matches_the_specification():
    impacts = {name: spec.impact for name, spec in CATALOG.items()}
    assert impacts == {
        "restart_unbound": Impact.LOW,
        "reload_caddy": Impact.LOW,
        "flush_dns_cache": Impact.LOW,
        "rotate_logs": Impact.LOW,
        "restart_caddy": Impact.MEDIUM,
        "restart_container": Impact.MEDIUM,
        "reboot_system": Impact.HIGH,
        "pve_restore": Impact.HIGH,
        "pve_restore_as": Impact.HIGH,
    }
    assert get_spec("reboot_system").idempotent is False
    assert get_spec("restart_unbound").probe is not None


def test_fingerprint_is_stable_and_hex():
    assert catalog_fingerprint() == catalog_fingerprint()
    assert len(catalog_fingerprint()) == 64


def test_probe_compares_the_whole_first_line():
    probe = get_spec("flush_dns_cache").probe
    assert probe.matches("active\n")
    assert not probe.matches("inactive\n")
    assert not probe.matches("")
