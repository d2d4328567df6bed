import pytest
from django.core.exceptions import ImproperlyConfigured

from portal.lib.env import (
    env_bool,
    env_int,
    env_int_list,
    env_list,
    env_secret,
    parse_database_url,
    validate_redis_url,
)


@pytest.mark.parametrize("raw", ["maybe", "2", "yess", "tru"])
def test_env_bool_rejects_non_booleans(monkeypatch, raw):
    monkeypatch.setenv("FLAG", raw)
    with pytest.raises(ImproperlyConfigured, match="FLAG"):
        env_bool("FLAG")


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("off", False), ("YES", True)])
def test_env_bool_reads_booleans(monkeypatch, raw, expected):
    monkeypatch.setenv("FLAG", raw)
    assert env_bool("FLAG") is expected


def test_env_int_rejects_text_and_out_of_range(monkeypatch):
    monkeypatch.setenv("N", "ten")
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        env_int("N", 1)
    monkeypatch.setenv("N", "-5")
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env_int("N", 1, minimum=0)
    monkeypatch.setenv("N", "42")
    assert env_int("N", 1, minimum=0) == 42


def test_env_list_splits_and_trims(monkeypatch):
    monkeypatch.setenv("HOSTS", " a.example , b.example,,")
    assert env_list("HOSTS") == ["a.example", "b.example"]


def test_env_secret_reads_file_and_refuses_both(monkeypatch, tmp_path):
    secret_file = tmp_path / "s"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("TOKEN_FILE", str(secret_file))
    assert env_secret("TOKEN") == "from-file"
    monkeypatch.setenv("TOKEN", "direct")
    with pytest.raises(ImproperlyConfigured, match="not both"):
        env_secret("TOKEN")
    monkeypatch.delenv("TOKEN")
    monkeypatch.setenv("TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="unreadable"):
        env_secret("TOKEN")


def test_database_url_parses_postgres_and_sqlite():
    pg = parse_database_url("postgres://u:p%40ss@db.example:6543/ops?sslmode=require")
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"], pg["NAME"]) == (
        "u",
        "p@ss",
        "db.example",
        "6543",
        "ops",
    )
    assert pg["OPTIONS"] == {"sslmode": "require"}
    assert parse_database_url("sqlite:////abs/portal.db")["NAME"] == "/abs/portal.db"


@pytest.mark.parametrize(
    "url",
    ["mysql://x@h/db", "postgres://h:notaport/db", "postgres://h:5432/", "sqlite://"],
)
def test_database_url_rejects_bad_values(url):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        parse_database_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://h:port/0"])
def test_redis_url_rejects_bad_values(url):
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        validate_redis_url(url)


def test_env_int_list_parses_and_refuses_bad_items(monkeypatch):
    monkeypatch.setenv("PORTS", " 22, 443 ")
    assert env_int_list("PORTS", [1], minimum=1, maximum=65535) == [22, 443]
    monkeypatch.setenv("PORTS", "22,http")
    with pytest.raises(ImproperlyConfigured, match="PORTS: 'http' is not an integer"):
        env_int_list("PORTS", [1])
    monkeypatch.setenv("PORTS", "22,70000")
    with pytest.raises(ImproperlyConfigured, match="70000 is outside 1..65535"):
        env_int_list("PORTS", [1], minimum=1, maximum=65535)
    monkeypatch.delenv("PORTS")
    assert env_int_list("PORTS", [53]) == [53]
