"""Where backup files live, behind one small interface (local directory now, S3 later).

A run writes its files into a staging area and commits them all at once;
until then nothing of it is listed. Locally: files are written under
``<source>/.incomplete/<run>/``, fsynced, a ``MANIFEST.json`` is written
last, and the directory is renamed to ``<source>/<run>/`` (atomic on one
filesystem) and the parent fsynced. A crash leaves only an ``.incomplete``
directory, which nobody can mistake for a backup and the sweeper removes.
An S3 backend would upload the objects, then the manifest, and list only
runs that have one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

from django.conf import settings

MANIFEST = "MANIFEST.json"
INCOMPLETE = ".incomplete"


class StorageError(RuntimeError):
    """The storage refused an operation (bad key, missing file, full disk)."""


class Writer(Protocol):
    """A file being written into staging (fsynced or uploaded when closed)."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Writer: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...


class StoredFile(Protocol):
    """A stored file opened for reading: a local file, or an S3 GET body."""

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...

    def __enter__(self) -> StoredFile: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...


class Staging(Protocol):
    def create(self, name: str) -> Writer: ...

    def commit(self, manifest: dict) -> bytes: ...

    def abort(self) -> None: ...


class Storage(Protocol):
    #: where it is, for people (a directory, a bucket)
    location: str

    def begin(self, run_key: str) -> Staging: ...

    def open(self, key: str) -> StoredFile: ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete_run(self, run_key: str) -> None: ...

    def list_runs(self) -> list[str]: ...

    def free_bytes(self) -> int | None: ...

    def sweep_incomplete(self, *, older_than: float, keep: set[str]) -> list[str]: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts):
        raise StorageError(f"bad storage key {key!r}")
    if any(p.startswith(".") for p in parts):
        raise StorageError(f"hidden names are reserved for staging: {key!r}")


class _SyncedFile:
    """A write-only file that is fsynced when closed (the data is on disk before the rename)."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "xb")  # exclusive create: never overwrite anything
        self.path = path

    def write(self, data: bytes) -> int:
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalStaging:
    def __init__(self, storage: LocalStorage, run_key: str) -> None:
        source, name = run_key.split("/", 1)
        self.run_key = run_key
        self.final = storage.root / source / name
        self.dir = storage.root / source / INCOMPLETE / name
        if self.final.exists():
            raise StorageError(f"{run_key} already exists")
        if self.dir.exists():
            shutil.rmtree(self.dir)  # a previous attempt of the same run died here
        self.dir.mkdir(parents=True, mode=0o700)
        self._files: list[_SyncedFile] = []

    def create(self, name: str) -> _SyncedFile:
        _check_key(name)
        if "/" in name or name == MANIFEST:
            raise StorageError(f"bad file name {name!r}")
        handle = _SyncedFile(self.dir / name)
        self._files.append(handle)
        return handle

    def commit(self, manifest: dict) -> bytes:
        """Make every file of the run visible at once; returns the manifest's bytes."""
        for handle in self._files:
            handle.close()
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        with _SyncedFile(self.dir / MANIFEST) as fh:
            fh.write(data)
        _fsync_dir(self.dir)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.dir, self.final)
        _fsync_dir(self.final.parent)
        return data

    def abort(self) -> None:
        for handle in self._files:
            with contextlib.suppress(OSError):
                handle.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalStorage:
    """A directory: ``<root>/<source>/<run>/<file>``, plus ``MANIFEST.json`` per run."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def begin(self, run_key: str) -> LocalStaging:
        _check_key(run_key)
        if run_key.count("/") != 1:
            raise StorageError(f"run keys are <source>/<run>, not {run_key!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        return LocalStaging(self, run_key)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise StorageError(f"{key} is missing from the storage") from None

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete_run(self, run_key: str) -> None:
        path = self._path(run_key)
        if path.exists():
            # Remove the manifest first: a half-deleted run is never listed as a backup.
            (path / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(path)

    def list_runs(self) -> list[str]:
        """Committed runs only (those with a manifest), as run keys."""
        if not self.root.exists():
            return []
        found = []
        for source in sorted(self.root.iterdir()):
            if source.name.startswith(".") or not source.is_dir():
                continue
            for run in sorted(source.iterdir()):
                if not run.name.startswith(".") and (run / MANIFEST).is_file():
                    found.append(f"{source.name}/{run.name}")
        return found

    def free_bytes(self) -> int | None:
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        stats = os.statvfs(path)
        return stats.f_bavail * stats.f_frsize

    def sweep_incomplete(self, *, older_than: float, keep: set[str]) -> list[str]:
        """Remove staging left by crashed runs (not in ``keep``, untouched for ``older_than`` s)."""
        removed: list[str] = []
        if not self.root.exists():
            return removed
        cutoff = time.time() - older_than
        for staging in self.root.glob(f"*/{INCOMPLETE}/*"):
            run_key = f"{staging.parent.parent.name}/{staging.name}"
            if run_key in keep or staging.stat().st_mtime > cutoff:
                continue
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(run_key)
        return removed


def get_storage() -> Storage:
    """The configured storage: the local directory, or an S3 bucket (``BACKUP_STORAGE``)."""
    if settings.BACKUP_STORAGE == "s3":
        from backups.s3 import from_settings

        return from_settings()
    return LocalStorage(settings.BACKUP_STORAGE_DIR)


def get_copy_storage() -> Storage | None:
    """The second copy's store (``BACKUP_COPY_TO=s3``), or None."""
    if settings.BACKUP_COPY_TO == "s3" and settings.BACKUP_STORAGE != "s3":
        from backups.s3 import from_settings

        return from_settings()
    return None


def storage_for(run) -> Storage:
    """Where to read ``run`` from: the primary store, or its second copy when the primary
    no longer has it (a lost disk) and the copy does."""
    primary = get_storage()
    if not run.copied_at or not run.artifact_path:
        return primary
    manifest = f"{run.artifact_path}/{MANIFEST}"
    try:
        if primary.exists(manifest):
            return primary
    except (StorageError, OSError):
        pass
    copy = get_copy_storage()
    return copy if copy is not None and copy.exists(manifest) else primary
