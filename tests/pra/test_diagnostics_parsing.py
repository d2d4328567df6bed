"""The diagnostics parsers on output captured from the VM target (Debian 12, systemd 252,
podman 4.3, procps 4; see tests/vm/ for the same parsers against the live host)."""

from __future__ import annotations

from pra.diagnostics import parse_output

STATUS = """active
MainPID=390
Result=success
NRestarts=0
Id=caddy.service
LoadState=loaded
ActiveState=active
SubState=running
ActiveEnterTimestamp=Wed 2026-12-02 01:30:39 UTC
"""

LOGS = """2026-12-02T01:33:37+0000 pra-vm unbound[480]: [480:0] notice: init module 0: subnetcache
2026-12-02T01:33:41+0000 pra-vm unbound[480]: [480:0] info: start of service (unbound 1.17.1).
2026-12-02T01:33:41+0000 pra-vm systemd[1]: Started unbound.service - Unbound DNS server.
"""

CONTAINER = """running
started_at=1796175029464632
pid=401
restarts=0
image=localhost/pra-tiny:latest
"""

FREE = """               total        used        free      shared  buff/cache   available
Mem:         1006132      187148      610536         520      208448      818984
Swap:              0           0           0
"""

MEMINFO = """MemTotal: 1006132 kB
MemAvailable: 818984 kB
SwapTotal: 0 kB
SwapFree: 0 kB
MemUsedPercent: 18.6
SwapUsedPercent: 0.0
"""

DF = """Filesystem     1024-blocks   Used Available Capacity Mounted on
/dev/vda           3021608 812344   2036424      29% /
tmpfs               503064      0    503064       0% /dev/shm
tmpfs                 5120      0      5120       0% /run/lock
"""


def test_status_is_the_state_word_and_systemds_properties():
    parsed = parse_output("service_status", STATUS)
    assert parsed["state"] == "active"
    assert parsed["properties"]["MainPID"] == "390"
    assert parsed["properties"]["ActiveEnterTimestamp"] == "Wed 2026-12-02 01:30:39 UTC"


def test_journal_lines_split_into_fields():
    parsed = parse_output("service_logs", LOGS)
    assert parsed["count"] == 3
    first, _, last = parsed["entries"]
    assert first == {
        "time": "2026-12-02T01:33:37+0000",
        "host": "pra-vm",
        "ident": "unbound",
        "pid": 480,
        "message": "[480:0] notice: init module 0: subnetcache",
    }
    assert (last["ident"], last["pid"]) == ("systemd", 1)


def test_no_entries_is_an_empty_list_with_the_note():
    parsed = parse_output("analyze_errors", "-- No entries --\n")
    assert parsed == {"entries": [], "count": 0, "notes": ["No entries"]}


def test_container_state_and_facts():
    parsed = parse_output("container_status", CONTAINER)
    assert parsed == {
        "state": "running",
        "started_at": "1796175029464632",
        "pid": "401",
        "restarts": "0",
        "image": "localhost/pra-tiny:latest",
    }


def test_memory_from_free_and_from_meminfo_agree():
    from_free = parse_output("memory_info", FREE)
    from_meminfo = parse_output("memory_info", MEMINFO)
    assert from_free["mem"]["total"] == from_meminfo["mem"]["total"] == 1006132
    assert from_free["mem_used_percent"] == from_meminfo["mem_used_percent"] == 18.6
    assert from_free["swap_used_percent"] == from_meminfo["swap_used_percent"] == 0.0


def test_df_rows():
    parsed = parse_output("disk_usage", DF)
    root = parsed["filesystems"][0]
    assert root == {
        "filesystem": "/dev/vda",
        "size_kb": 3021608,
        "used_kb": 812344,
        "available_kb": 2036424,
        "used_percent": 29,
        "mounted_on": "/",
    }
    assert len(parsed["filesystems"]) == 3 and parsed["unparsed"] == []


def test_health_verdict_and_reasons():
    parsed = parse_output("service_health", "UNHEALTHY: not active (failed); 3 error line(s)\n")
    assert parsed == {"healthy": False, "reasons": ["not active (failed)", "3 error line(s)"]}


def test_free_text_diagnostics_have_no_parser():
    assert parse_output("test_connectivity", "OK 10.0.0.1:53\n") is None
