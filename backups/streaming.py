"""Tool output → zstd → storage, streamed, with SHA-256 and byte counts on the way.

Nothing here holds a backup whole in memory: the tool's stdout is read in
chunks of at most ``CHUNK`` bytes, compressed and written as it comes. The
reverse direction (``open_decompressed``, ``feed``) streams a stored artifact
into a restore or verification tool the same way.
"""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol, cast

import zstandard

from backups import encryption

if TYPE_CHECKING:
    from backups.models import BackupArtifact
    from backups.storage import Storage, Writer

CHUNK = 1 << 20
# What reading a stored artifact back can raise when its bytes are bad (not a bug).
UNREADABLE: tuple[type[BaseException], ...] = (
    encryption.EncryptionError,
    zstandard.ZstdError,
    OSError,
    ValueError,
)


class Reader(Protocol):
    """What the streaming code reads: a file, a pipe, or one of the wrappers in backups/."""

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


@dataclass
class StreamResult:
    bytes_raw: int
    bytes_stored: int
    sha256: str
    key_id: str = ""  # the encryption key's id; blank: stored unencrypted

    def recorded(self) -> dict:
        """What the artifact's row keeps about how it was stored, besides sizes and checksum."""
        return {"key_id": self.key_id}


def store_options() -> dict:
    """How new artifacts are written (``compress_stream`` keyword arguments), from settings:
    zstd level and threads, and the encryption key (None: encryption off)."""
    from django.conf import settings

    return {
        "level": settings.BACKUP_ZSTD_LEVEL,
        "threads": settings.BACKUP_ZSTD_THREADS,
        "key": encryption.encrypting_key(),
    }


class _HashingWriter:
    """Counts and hashes what is written through it (the stored, compressed bytes)."""

    def __init__(self, out: Writer) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.count += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


class BoundedText:
    """Keeps the first and last bytes of a stream (a tool's stderr), never all of it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.limit // 2 - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size > self.limit // 2 and len(self.tail) > 1:
            dropped = self.tail.popleft()
            self.tail_size -= len(dropped)
            self.dropped += len(dropped)

    def text(self) -> str:
        middle = f"\n[… {self.dropped} bytes cut …]\n" if self.dropped else ""
        tail = b"".join(self.tail)[-(self.limit // 2) :]
        return self.head.decode(errors="replace") + middle + tail.decode(errors="replace")


def drain_in_thread(stream: IO[bytes], sink: BoundedText) -> threading.Thread:
    """Read ``stream`` to its end in a thread (a full stderr pipe would block the tool)."""

    def run() -> None:
        while True:
            data = stream.read(65536)
            if not data:
                break
            sink.add(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def compress_stream(
    source: IO[bytes],
    out: Writer,
    *,
    level: int = 3,
    threads: int = 0,
    holdback: int = 0,
    finish_tail: Callable[[bytes], bytes] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_read: Callable[[int], None] | None = None,
    key: encryption.Key | None = None,
) -> StreamResult:
    """Compress (then, with ``key``, encrypt) everything read from ``source`` into ``out``.

    ``holdback`` keeps the last N bytes back until the end, when
    ``finish_tail(tail)`` decides what of them to keep (redis-cli appends a
    transfer marker to a diskless RDB on stdout). ``on_read(n)`` hears of
    every read, however small (the stall watchdog's sign of life).
    """
    hashing = _HashingWriter(out)
    sealing = encryption.EncryptingWriter(hashing, key) if key is not None else None
    params = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    # zstandard writes to any object with write(); its stubs ask for IO[bytes].
    target = cast(IO[bytes], sealing or hashing)
    compressor = params.stream_writer(target, closefd=False, write_size=CHUNK)
    raw = 0
    pending = b""
    fd = source.fileno()
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            break
        if on_read is not None:
            on_read(len(data))
        if holdback:
            data = pending + data
            data, pending = data[:-holdback], data[-holdback:]
        if data:
            compressor.write(data)
            raw += len(data)
            if on_progress is not None:
                on_progress(raw)
    if holdback:
        tail = finish_tail(pending) if finish_tail else pending
        compressor.write(tail)
        raw += len(tail)
    compressor.flush(zstandard.FLUSH_FRAME)
    compressor.close()
    if sealing is not None:
        sealing.finish()  # the final chunk: without it the file reads as truncated
    return StreamResult(
        bytes_raw=raw,
        bytes_stored=hashing.count,
        sha256=hashing.sha.hexdigest(),
        key_id=key.id if key is not None else "",
    )


def sha256_of(stream: BinaryIO) -> tuple[str, int]:
    """SHA-256 and size of a stored file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    while True:
        data = stream.read(CHUNK)
        if not data:
            break
        sha.update(data)
        size += len(data)
    return sha.hexdigest(), size


def open_decompressed(stored: Reader) -> BinaryIO:
    """A streaming reader of the original bytes of a stored zstd stream."""
    # zstandard reads from any object with read(); its stubs ask for IO[bytes].
    source = cast(IO[bytes], stored)
    return zstandard.ZstdDecompressor().stream_reader(source, read_size=CHUNK, closefd=True)


def open_plain(stored: Reader, artifact: BackupArtifact) -> BinaryIO:
    """A streaming reader of what the tool wrote, from an artifact's stored bytes
    (decrypted with the artifact's key, then decompressed). Closing it closes ``stored``.

    A missing key or a bad header raises ``EncryptionError`` here, before any byte is used.
    """
    if not artifact.key_id:
        return open_decompressed(stored)
    try:
        plain = encryption.DecryptingReader(stored, encryption.keyring(), artifact.key_id)
    except BaseException:
        stored.close()
        raise
    return open_decompressed(plain)


def check_readable(storage: Storage, artifact: BackupArtifact) -> None:
    """Raise (``UNREADABLE``) unless the artifact's first bytes decrypt and decompress."""
    with open_plain(storage.open(artifact.key), artifact) as reader:
        reader.read(1)


def feed(
    reader: Reader, proc: subprocess.Popen[bytes], errors: list[BaseException]
) -> threading.Thread:
    """Copy ``reader`` into ``proc``'s stdin in a thread, then close it (EOF for the tool)."""
    stdin = proc.stdin
    if stdin is None:
        raise ValueError("feed needs a process started with stdin=subprocess.PIPE")

    def run() -> None:
        try:
            while True:
                data = reader.read(CHUNK)
                if not data:
                    break
                stdin.write(data)
        except BrokenPipeError:
            pass  # the tool stopped reading; its exit code tells why
        except BaseException as exc:  # reported to the caller, who decides
            errors.append(exc)
        finally:
            try:
                stdin.close()
            except BrokenPipeError:
                pass
            reader.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
