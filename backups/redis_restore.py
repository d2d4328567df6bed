"""Restoring a Redis RDB into a live server, all or nothing.

The RDB is loaded into a private ``redis-server`` on a unix socket (it only
reads it), then:

1. **Stage**: every database of the backup is copied key by key (``DUMP`` /
   ``RESTORE``, TTLs kept) into a *spare* database index of the target — the
   highest-numbered indexes that hold no keys and are not in the backup.
   The target's live databases are not touched.
2. **Check**: each staging database holds what was copied; a scratch target
   is still empty.
3. **Switch**: one ``MULTI`` … ``EXEC`` of ``SWAPDB live staging`` per
   database (and ``FLUSHDB`` of live databases the backup does not have).
   Redis runs a transaction as one step: clients see the old data or the new,
   never a mix. ``SWAPDB`` and ``FLUSHDB`` cannot fail at run time once
   queued, so the switch is whole.
4. **Clean up**: the staging indexes (now holding the old data) are flushed.

Any failure before the switch (a key the target refuses, out of memory, a
connection dropped mid-transfer) flushes the staging indexes over a new
connection and leaves the live databases exactly as they were. A reply lost
during ``EXEC`` is resolved by asking the server how many ``SWAPDB`` it has
run (``INFO commandstats``), never by sending the transaction again (a second
``SWAPDB`` would undo the first); clients here never retry on their own.

Limits: the target needs memory for the old and the new data at once (checked
against ``maxmemory`` before anything is written), enough spare database
indexes (``databases``, 16 by default), and no application may use those
spare indexes meanwhile. Redis Cluster has no ``SWAPDB`` (nor databases other
than 0): restore a cluster node by node from the outside.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import redis

from backups.choices import RestoreMode
from backups.models import BackupArtifact
from backups.restore import RedisTarget, RestoreError
from backups.storage import Storage
from backups.verify import decompress_to

BATCH = 500
# Staging needs the new data next to the old: refuse when maxmemory leaves less than this.
MEMORY_HEADROOM = 1.2


class _SwitchUnknown(RestoreError):
    """The switch's reply was lost and the server cannot tell whether it ran."""


class _TempRedis:
    """A private redis-server on a unix socket, loading an RDB file (to read it key by key)."""

    def __init__(self, directory: Path) -> None:
        import subprocess

        self.socket = directory / "redis.sock"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(self.socket),
             "--dir", str(directory), "--dbfilename", "dump.rdb", "--save", "",
             "--appendonly", "no", "--loglevel", "notice"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        output = self.proc.stdout
        assert output is not None  # opened with subprocess.PIPE
        log = []
        for line in output:  # wait for the server to say it is ready (or die)
            log.append(line)
            if "ready to accept connections" in line.lower():
                break
        else:
            self.proc.wait()
            raise RestoreError("redis-server could not load the RDB: " + "".join(log)[-800:])
        # Keep reading its log so the server never blocks on a full pipe.
        threading.Thread(target=output.read, daemon=True).start()

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), db=db)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def keyspace(client: redis.Redis) -> dict[int, int]:
    """Keys per database index, from INFO keyspace (databases without keys are absent)."""
    return {int(db[2:]): info["keys"] for db, info in client.info("keyspace").items()}


def restore_redis(
    target: RedisTarget,
    storage: Storage,
    artifact: BackupArtifact,
    mode: str,
) -> dict:
    """Replace the target's data by the RDB's, all or nothing (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="redis-restore-") as tmp:
        decompress_to(storage, artifact, Path(tmp) / "dump.rdb")
        loaded = _TempRedis(Path(tmp))
        try:
            return _StagedRestore(loaded, target, mode, artifact).run()
        finally:
            loaded.stop()


class _StagedRestore:
    def __init__(
        self,
        loaded: _TempRedis,
        target: RedisTarget,
        mode: str,
        artifact: BackupArtifact,
    ) -> None:
        self.loaded = loaded
        self.target = target
        self.mode = mode
        self.artifact = artifact
        self.staging: dict[int, int] = {}  # live db -> staging db
        self.warnings: list[str] = []
        self.volatile = 0  # keys copied with a TTL (they may expire before the check)

    # --- the steps -------------------------------------------------------------------

    def run(self) -> dict:
        source = self._read_source()
        admin = self.target.client()
        try:
            try:
                live = keyspace(admin)
                databases = self._databases(admin)
                memory = admin.info("memory")
            except (redis.RedisError, OSError) as exc:
                raise RestoreError(f"cannot read Redis at {self.target.name}: {exc}") from None
            held = sum(live.values())
            if self.mode == RestoreMode.SCRATCH and held:
                raise RestoreError(
                    f"the scratch Redis {self.target.name} now holds {held} keys; "
                    "nothing was changed"
                )
            self._check_memory(memory)
            self.staging = self._pick_staging(databases, set(source), set(live))
            drop = sorted(set(live) - set(source))
            try:
                written = self._stage()
                self._check_staged(admin, written)
                if self.mode == RestoreMode.SCRATCH:
                    now = keyspace(admin)
                    if any(now.get(db) for db in source):
                        raise RestoreError(
                            f"the scratch Redis {self.target.name} got keys meanwhile"
                        )
                switched = self._switch(drop)
            except _SwitchUnknown:
                raise
            except Exception as exc:
                self._abandon(exc)
            if not switched:
                self._abandon(RestoreError("the switch (MULTI/EXEC of SWAPDB) did not run"))
            self._flush_staging("the previous data")
            restored = keyspace(admin)
        finally:
            admin.close()
        live_now = {db: n for db, n in restored.items() if db not in self.staging.values()}
        return {
            "component": self.artifact.component,
            "target": self.target.name,
            "ok": live_now == source,
            "method": "staged in spare databases, switched with SWAPDB in one MULTI/EXEC",
            "staging_databases": {str(k): v for k, v in sorted(self.staging.items())},
            "flushed_databases": drop,
            "keys": {str(k): v for k, v in sorted(live_now.items())},
            "keys_expected": {str(k): v for k, v in sorted(source.items())},
            "warnings": self.warnings,
        }

    def _read_source(self) -> dict[int, int]:
        client = self.loaded.client()
        try:
            self.dataset_bytes = int(client.info("memory").get("used_memory_dataset", 0))
            return keyspace(client)
        finally:
            client.close()

    def _databases(self, admin: redis.Redis) -> int:
        try:
            value = admin.config_get("databases").get("databases")
            return int(value) if value is not None else 16
        except redis.ResponseError:  # CONFIG renamed or refused (managed Redis): the default
            return 16

    def _check_memory(self, memory: dict[str, Any]) -> None:
        limit = int(memory.get("maxmemory") or 0)
        if not limit:
            return
        used = int(memory.get("used_memory") or 0)
        need = int(self.dataset_bytes * MEMORY_HEADROOM)
        if used + need > limit:
            raise RestoreError(
                f"not enough memory to stage the restore next to the live data: about "
                f"{need / 1e6:.1f} MB needed, {max(limit - used, 0) / 1e6:.1f} MB left under "
                f"maxmemory on {self.target.name} (policy {memory.get('maxmemory_policy')}); "
                "nothing was changed"
            )

    def _pick_staging(self, databases: int, source: set[int], live: set[int]) -> dict[int, int]:
        spare = [db for db in range(databases - 1, -1, -1) if db not in source | live]
        if len(spare) < len(source):
            raise RestoreError(
                f"{self.target.name} has {len(spare)} empty spare database index(es); staging "
                f"this backup needs {len(source)} (raise 'databases' or empty some); "
                "nothing was changed"
            )
        return dict(zip(sorted(source), spare, strict=False))

    def _stage(self) -> dict[int, int]:
        written: dict[int, int] = {}
        for db, stage in self.staging.items():
            src, out = self.loaded.client(db), self.target.client(stage)
            try:
                if out.dbsize():
                    raise RestoreError(f"staging database {stage} is not empty")
                written[db] = 0
                batch: list[bytes] = []
                for key in src.scan_iter(count=1000):
                    batch.append(key)
                    if len(batch) >= BATCH:
                        written[db] += self._move(src, out, batch)
                        batch = []
                if batch:
                    written[db] += self._move(src, out, batch)
            finally:
                src.close()
                out.close()
        return written

    def _move(self, src: redis.Redis, out: redis.Redis, keys: list[bytes]) -> int:
        count, volatile = _move_batch(src, out, keys)
        self.volatile += volatile
        return count

    def _check_staged(self, admin: redis.Redis, written: dict[int, int]) -> None:
        found = keyspace(admin)
        for db, stage in self.staging.items():
            # Keys with a TTL may expire while staging; more keys than written means someone
            # else writes into the staging database.
            have = found.get(stage, 0)
            if have > written[db] or have < written[db] - self.volatile:
                raise RestoreError(
                    f"staging database {stage} holds {have} keys, "
                    f"{written[db]} were copied (is another client using it?)"
                )

    def _switch(self, drop: list[int]) -> bool:
        """One transaction: swap every staged database in, flush live ones not in the backup."""
        before = self._swapdb_calls()
        conn = self.target.client(single=True)
        try:
            conn.execute_command("MULTI")
            for db, stage in self.staging.items():
                conn.execute_command("SWAPDB", db, stage)
            for db in drop:
                conn.execute_command("SELECT", db)
                conn.execute_command("FLUSHDB")
            replies = conn.execute_command("EXEC")
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # The EXEC may or may not have run: ask the server, never send it again.
            after = self._swapdb_calls()
            if after is None or before is None:
                staged = ", ".join(f"{db}<->{st}" for db, st in self.staging.items())
                raise _SwitchUnknown(
                    f"the connection to {self.target.name} was lost during the switch and "
                    "the server cannot be asked whether it ran: check the target by hand "
                    f"(SWAPDB pairs {staged}; the staging databases were left as they are)"
                ) from None
            return after - before >= len(self.staging)
        finally:
            conn.close()
        failed = [r for r in replies or [] if isinstance(r, Exception)]
        if replies is None or failed:
            raise RestoreError(f"the switch was refused by {self.target.name}: {failed[:3]}")
        return True

    def _swapdb_calls(self) -> int | None:
        try:
            client = self.target.client()
            try:
                stats = client.info("commandstats")
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return None
        return int(stats.get("cmdstat_swapdb", {}).get("calls", 0))

    def _flush_staging(self, what: str) -> bool:
        """FLUSHDB the staging databases over fresh connections; False if that failed."""
        ok = True
        for stage in self.staging.values():
            for attempt in range(3):
                try:
                    client = self.target.client(stage)
                    try:
                        client.flushdb(asynchronous=True)
                    finally:
                        client.close()
                    break
                except (redis.RedisError, OSError) as exc:
                    if attempt == 2:
                        ok = False
                        self.warnings.append(
                            f"could not flush staging database {stage} ({what}): {exc}; "
                            f"run FLUSHDB in database {stage} of {self.target.name}"
                        )
                    else:
                        time.sleep(0.2 * (attempt + 1))  # a reconnect after a dropped link
        return ok

    def _abandon(self, exc: BaseException) -> NoReturn:
        flushed = self._flush_staging("a partial copy")
        note = "" if flushed else " " + "; ".join(self.warnings)
        raise RestoreError(
            f"Redis restore into {self.target.name} stopped before the switch: {exc}. "
            f"The live databases were not touched; nothing was changed.{note}"
        ) from None


def _move_batch(src: redis.Redis, out: redis.Redis, keys: list[bytes]) -> tuple[int, int]:
    """Copy ``keys`` (DUMP + PTTL, then RESTORE REPLACE); returns (copied, copied with a TTL)."""
    read = src.pipeline(transaction=False)
    for key in keys:
        read.dump(key)
        read.pttl(key)
    values = read.execute()
    write = out.pipeline(transaction=False)
    count = volatile = 0
    sent: list[bytes] = []
    for i, key in enumerate(keys):
        payload, ttl = values[2 * i], values[2 * i + 1]
        if payload is None or ttl == -2:
            continue  # expired while we read it
        write.restore(key, max(ttl, 0), payload, replace=True)
        sent.append(key)
        count += 1
        volatile += ttl > 0
    # Errors are read here, not raised by redis-py: its message would quote the command,
    # payload bytes included.
    for key, reply in zip(sent, write.execute(raise_on_error=False), strict=False):
        if isinstance(reply, Exception):
            reason = str(reply.args[0] if reply.args else reply).split("caused error: ")[-1]
            raise RestoreError(
                f"the target refused key {key[:80]!r}: {reason[:300]} ({type(reply).__name__})"
            )
    return count, volatile
