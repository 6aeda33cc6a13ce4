"""Every path the engine reads or writes is a URI: a local path, ``file://``, ``s3://``,
``gs://``, ``hdfs://`` ... through fsspec (``s3fs`` and ``gcsfs`` are the ``s3`` and ``gcs``
extras). S3-compatible endpoints are taken from the standard AWS environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...), so the same command runs against AWS,
MinIO or a local test server.

Local paths keep the commit protocol's temp-file-and-rename; on object storage a PUT is
atomic per object, so files are written at their final name (the completion marker, written
last, is still what makes a shard count).
"""
from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from typing import IO, Optional

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.core import url_to_fs


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
    """(fsspec filesystem, path inside it) for a URI."""
    return url_to_fs(str(uri))


def _with_protocol(fs: fsspec.AbstractFileSystem, like: str, path: str) -> str:
    if is_local(like):
        return path
    return fs.unstrip_protocol(path)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def isdir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.isdir(path)


def isfile(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.isfile(path)


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    return int(fs.size(path))


def identity(uri: str) -> str:
    """A file's version: size plus ETag on object storage, or size and modification time."""
    if is_local(uri):
        stat = os.stat(_local(uri))
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    fs, path = filesystem(uri)
    info = fs.info(path)
    version = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation") \
        or info.get("LastModified") or info.get("mtime") or info.get("updated")
    return f"{info.get('size')}:{str(version).strip(chr(34))}"


def find(uri: str, suffixes: Optional[tuple[str, ...]] = None, skip_prefixes: tuple[str, ...] = (".",)
         ) -> list[str]:
    """Files under ``uri`` (recursively), sorted by their path relative to it, whose name ends
    with one of ``suffixes`` (case-insensitive) and no part of whose relative path starts
    with one of ``skip_prefixes``. URIs keep their scheme."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    found = []
    for path in fs.find(root):
        relative = path[len(root):].lstrip("/")
        if any(part.startswith(skip_prefixes) for part in relative.split("/")):
            continue
        if suffixes is None or relative.lower().endswith(suffixes):
            found.append((relative, path))
    return [_with_protocol(fs, uri, path) for _, path in sorted(found)]


def listdir(uri: str, prefix: str = "") -> list[str]:
    """The entries directly under ``uri`` whose names start with ``prefix`` ([] if absent)."""
    fs, path = filesystem(uri)
    if not fs.isdir(path):
        return []
    return sorted(_with_protocol(fs, uri, p) for p in fs.ls(path, detail=False)
                  if posixpath.basename(p.rstrip("/")).startswith(prefix))


def glob(pattern: str) -> list[str]:
    fs, path = filesystem(pattern)
    return sorted(_with_protocol(fs, pattern, p) for p in fs.glob(path))


def open_file(uri: str, mode: str = "rb") -> IO:
    return fsspec.open(str(uri), mode).open()


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_many(uris: list[str]) -> dict[str, bytes]:
    """Whole small files by URI; object stores fetch them concurrently."""
    if not uris:
        return {}
    fs, _ = filesystem(uris[0])
    paths = [filesystem(uri)[1] for uri in uris]
    contents = fs.cat(paths)
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
        fs.pipe_file(path, data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def remove(uri: str) -> None:
    """Delete a file or a folder with everything under it; nothing if absent."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


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
    return pq.ParquetFile(filesystem_.open_input_file(path), **kwargs)


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


