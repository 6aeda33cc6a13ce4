"""Every path the engine reads or writes is a URI: a local path, ``file://``, ``s3://``,
``gs://``, ``hdfs://`` ... through fsspec (``s3fs`` and ``gcsfs`` are the ``s3`` and ``gcs``
extras). S3-compatible endpoints are taken from the standard AWS environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...), so the same command runs against AWS,
MinIO or a local test server.

Local paths keep the commit protocol's temp-file-and-rename; on object storage a PUT is
atomic per object, so files are written at their final name (the completion marker, written
last, is still what makes a shard count).

Object storage hiccups (connection resets, timeouts, 5xx and throttling): botocore retries
each S3 request itself (``S3_CONFIG``), and the calls below that read, list or wholly
replace remote objects are tried again with backoff on top (:func:`with_retries`), counted
per thread (:func:`retry_count`), so one bad minute of a bucket does not fail a shard.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Callable, Optional, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

try:  # the s3 extra: botocore's network errors are not builtin ConnectionErrors
    from botocore.exceptions import ConnectionError as _BotoConnectionError, HTTPClientError as _BotoHTTPError
    NETWORK_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, _BotoConnectionError,
                                                       _BotoHTTPError)
except ImportError:
    NETWORK_ERRORS = (ConnectionError, TimeoutError)

log = logging.getLogger(__name__)
T = TypeVar("T")

# botocore's own retries of each S3 request: exponential backoff on throttling, 5xx and
# connection errors ("standard" mode; "adaptive" adds client-side rate limiting, experimental).
S3_CONFIG = {"retries": {"max_attempts": 5, "mode": "standard"}}
# Errors that say the storage hiccuped, not that the data is bad: worth another try. s3fs
# turns a 503/SlowDown/ServiceUnavailable into EBUSY, InternalError into EREMOTEIO.
TRANSIENT_ERRNOS = (errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                    getattr(errno, "EREMOTEIO", errno.EIO))
RETRY_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.5
_retries = threading.local()


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may pass on another try; a missing or forbidden file never does."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, NETWORK_ERRORS):
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def retry_count() -> int:
    """Retries this thread has made after transient storage errors (:func:`back_off`). Per
    thread, so that the difference across a shard's pass counts that shard's retries even
    when a runner works on several shards at once in threads."""
    return getattr(_retries, "count", 0)


def back_off(error: BaseException, attempt: int, what: str) -> None:
    """Re-raise ``error`` unless it is transient and attempts remain (with a note that says
    how many were made); else count a retry and wait 0.5, 1, 2 s."""
    if not is_transient(error):
        raise error
    if attempt >= RETRY_ATTEMPTS - 1:
        error.add_note(f"{what}: gave up after {RETRY_ATTEMPTS} attempts")
        raise error
    delay = RETRY_BASE_SECONDS * 2 ** attempt
    log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(error).__name__, error, delay)
    _retries.count = retry_count() + 1
    time.sleep(delay)


def with_retries(call: Callable[[], T], what: str) -> T:
    """``call()``, tried again with exponential backoff while it fails with a transient error."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - sorted by back_off
            back_off(error, attempt, what)
    raise AssertionError("unreachable")


def _remote(uri: str, call: Callable[[], T], what: str) -> T:
    """``call()`` with retries when ``uri`` is on object storage; local calls fail at once."""
    return call() if is_local(uri) else with_retries(call, f"{what} {uri}")


def local_cache() -> Path:
    """This machine's cache, ``$I2E_CACHE`` or ``~/.cache/i2e``: what each machine builds or
    copies once and then reuses (default KBs, alias indexes, fetched encoders, the demo)."""
    return Path(os.environ.get("I2E_CACHE") or Path.home() / ".cache" / "i2e")


def is_local(uri: str | os.PathLike) -> bool:
    uri = str(uri)
    return "://" not in uri or uri.startswith("file://")


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def normalize(uri: str | os.PathLike) -> str:
    """An absolute local path, or the URI as given without a trailing slash."""
    uri = str(uri)
    return os.path.abspath(_local(uri)) if is_local(uri) else uri.rstrip("/")


def join(base: str | os.PathLike, *parts: str) -> str:
    base = str(base)
    if is_local(base):
        return os.path.join(_local(base), *parts)
    return posixpath.join(base.rstrip("/"), *parts)


def name(uri: str) -> str:
    return posixpath.basename(str(uri).rstrip("/"))


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a URI; S3 clients retry requests (S3_CONFIG)."""
    uri = str(uri)
    if uri.startswith(("s3://", "s3a://")):
        return url_to_fs(uri, config_kwargs=S3_CONFIG)
    return url_to_fs(uri)


def _with_protocol(fs: fsspec.AbstractFileSystem, like: str, path: str) -> str:
    if is_local(like):
        return path
    return fs.unstrip_protocol(path)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return _remote(uri, lambda: fs.exists(path), "checking")


def isdir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return _remote(uri, lambda: fs.isdir(path), "checking")


def isfile(uri: str) -> bool:
    fs, path = filesystem(uri)
    return _remote(uri, lambda: fs.isfile(path), "checking")


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    return int(_remote(uri, lambda: fs.size(path), "sizing"))


def identity(uri: str) -> str:
    """A file's version, derived from its content, so that committed work is reused only for
    the same bytes: ``sha256:<hex>`` of a local file (:func:`file_digest`); on object
    storage the size plus the ETag (S3: an MD5 of the content, or of its parts' MD5s for a
    multipart upload) or MD5/generation (GCS); on a store with neither, the size plus the
    modification time."""
    if is_local(uri):
        return f"sha256:{file_digest(_local(uri))}"
    fs, path = filesystem(uri)
    info = _remote(uri, lambda: fs.info(path), "reading the version of")
    version = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation") \
        or info.get("LastModified") or info.get("mtime") or info.get("updated")
    return f"{info.get('size')}:{str(version).strip(chr(34))}"


DIGEST_CACHE = "file-digests.sqlite"
RACY_SECONDS = 2
_digest_lock = threading.Lock()
_digest_dbs: dict[tuple[int, Path], sqlite3.Connection] = {}   # by process: a forked worker opens its own


def _digest_db() -> sqlite3.Connection:
    """This process's connection to this machine's digest cache (``local_cache()``)."""
    path = local_cache() / DIGEST_CACHE
    key = (os.getpid(), path)
    if key not in _digest_dbs:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        # A write-ahead log without a sync per insert: a cache entry lost in a power cut is only hashed again.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stat TEXT NOT NULL, "
                   "sha256 TEXT NOT NULL)")
        _digest_dbs[key] = db
    return _digest_dbs[key]


def _stat_key(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def file_digest(path: str) -> str:
    """sha256 of a local file's content (read once, at about 1.3 GB/s of hashing per core),
    reused from this machine's cache while the file's status (device, inode, size, mtime and
    ctime) is the one it was hashed at, so that a rerun over unchanged inputs reads none.

    The status is only a key to a digest, never an identity: the kernel sets a file's ctime
    on every write, replacement and ``utime`` and no user can set it back, so new content
    always comes with a new key, even under the size and mtime of the old (``cp -p``,
    archives extracted with fixed timestamps). A file changed within RACY_SECONDS before it
    was hashed is not cached, as a second change in the same clock tick could keep its
    ctime; nor is one that changed while it was read."""
    path = os.path.abspath(path)
    stat = _stat_key(os.stat(path))
    with _digest_lock:
        cached = _digest_db().execute("SELECT stat, sha256 FROM digests WHERE path = ?", (path,)).fetchone()
    if cached is not None and cached[0] == stat:
        return cached[1]
    started = time.time_ns()
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    after = os.stat(path)
    if _stat_key(after) == stat and started - after.st_ctime_ns > RACY_SECONDS * 10**9:
        with _digest_lock:
            _digest_db().execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (path, stat, digest))
    return digest


def find(uri: str, suffixes: Optional[tuple[str, ...]] = None, skip_prefixes: tuple[str, ...] = (".",)
         ) -> list[str]:
    """Files under ``uri`` (recursively), sorted by their path relative to it, whose name ends
    with one of ``suffixes`` (case-insensitive) and no part of whose relative path starts
    with one of ``skip_prefixes``. URIs keep their scheme."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    found = []
    for path in _remote(uri, lambda: fs.find(root), "listing"):
        relative = path[len(root):].lstrip("/")
        if any(part.startswith(skip_prefixes) for part in relative.split("/")):
            continue
        if suffixes is None or relative.lower().endswith(suffixes):
            found.append((relative, path))
    return [_with_protocol(fs, uri, path) for _, path in sorted(found)]


def listdir(uri: str, prefix: str = "") -> list[str]:
    """The entries directly under ``uri`` whose names start with ``prefix`` ([] if absent)."""
    fs, path = filesystem(uri)
    if not isdir(uri):
        return []
    return sorted(_with_protocol(fs, uri, p) for p in _remote(uri, lambda: fs.ls(path, detail=False), "listing")
                  if posixpath.basename(p.rstrip("/")).startswith(prefix))


def glob(pattern: str) -> list[str]:
    fs, path = filesystem(pattern)
    return sorted(_with_protocol(fs, pattern, p) for p in _remote(pattern, lambda: fs.glob(path), "listing"))


def open_file(uri: str, mode: str = "rb") -> IO:
    """An open file; on object storage, opening is retried, and each ranged read of a file
    opened for reading is retried by the client (botocore, s3fs)."""
    fs, path = filesystem(uri)
    return _remote(str(uri), lambda: fs.open(path, mode), "opening")


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return _remote(uri, lambda: fs.cat_file(path), "reading")


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_many(uris: list[str]) -> dict[str, bytes]:
    """Whole small files by URI; object stores fetch them concurrently."""
    if not uris:
        return {}
    fs, _ = filesystem(uris[0])
    paths = [filesystem(uri)[1] for uri in uris]
    contents = _remote(uris[0], lambda: fs.cat(paths), f"reading {len(uris)} files like")
    return {uri: contents[path] for uri, path in zip(uris, paths)}


def _temp_beside(path: str) -> str:
    """A hidden, unique temporary name in ``path``'s folder (created), for temp + rename."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically: temp + rename locally, one PUT on object storage."""
    if is_local(uri):
        path = _local(uri)
        tmp = _temp_beside(path)
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    else:
        fs, path = filesystem(uri)
        with_retries(lambda: fs.pipe_file(path, data), f"writing {uri}")   # a PUT: repeating it is safe


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def remove(uri: str) -> None:
    """Delete a file or a folder with everything under it; nothing if absent."""
    fs, path = filesystem(uri)
    if exists(uri):
        _remote(uri, lambda: fs.rm(path, recursive=True), "removing")


def move(source: str, target: str) -> None:
    """Rename a file or folder (a copy and a delete on object storage)."""
    if is_local(source):
        os.replace(_local(source), _local(target))
    else:
        fs, path = filesystem(source)
        fs.mv(path, filesystem(target)[1], recursive=True)


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path) for reading and writing parquet at ``uri``."""
    if is_local(uri):
        return pafs.LocalFileSystem(), _local(uri)
    fs, path = filesystem(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def parquet_file(uri: str, **kwargs) -> pq.ParquetFile:
    filesystem_, path = arrow_filesystem(uri)
    return _remote(uri, lambda: pq.ParquetFile(filesystem_.open_input_file(path), **kwargs), "opening")


class ParquetSink:
    """A parquet file written batch by batch, appearing at ``uri`` only when closed (temp +
    rename locally; one multipart upload on object storage)."""

    def __init__(self, uri: str, schema: pa.Schema):
        self.uri = uri
        if is_local(uri):
            self._tmp: Optional[str] = _temp_beside(_local(uri))
            self._writer = pq.ParquetWriter(self._tmp, schema)
        else:
            self._tmp = None
            filesystem_, path = arrow_filesystem(uri)
            self._writer = pq.ParquetWriter(path, schema, filesystem=filesystem_)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()
        if self._tmp is not None:
            os.replace(self._tmp, _local(self.uri))

    def abort(self) -> None:
        self._writer.close()
        if self._tmp is not None:
            os.unlink(self._tmp)
        else:
            remove(self.uri)


