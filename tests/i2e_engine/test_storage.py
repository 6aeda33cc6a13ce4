"""storage: content identities of local files (and their cache), retries of transient
storage errors, counted; object-storage cases run against a real moto server."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from i2e_engine import storage


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch) -> None:
    """A digest cache of the test's own, and no waiting between retries."""
    monkeypatch.setenv("I2E_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(storage, "RETRY_BASE_SECONDS", 0.0)


def _same_size_and_mtime(*paths: Path) -> None:
    for path in paths:
        os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


def test_local_identity_is_the_content_not_size_and_mtime(tmp_path: Path) -> None:
    first, second, copy = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    first.write_bytes(b"first photo")
    second.write_bytes(b"other photo")
    copy.write_bytes(b"first photo")
    _same_size_and_mtime(first, second, copy)
    assert storage.identity(str(first)) == f"sha256:{hashlib.sha256(b'first photo').hexdigest()}"
    assert storage.identity(str(first)) != storage.identity(str(second))
    assert storage.identity(str(copy)) == storage.identity(f"file://{first}")


def _counting_digests(monkeypatch) -> list[int]:
    """Counts the files storage reads to hash them."""
    reads = [0]
    real = hashlib.file_digest

    def counted(*args, **kwargs):
        reads[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "file_digest", counted)
    return reads


def test_cached_digest_is_reused_until_the_file_changes_under_the_same_size_and_mtime(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    monkeypatch.setattr(storage, "RACY_SECONDS", 0)   # cache files however recently written
    reads = _counting_digests(monkeypatch)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"one photo")
    _same_size_and_mtime(photo)
    first = storage.identity(str(photo))
    assert storage.identity(str(photo)) == first and reads[0] == 1   # the second from the cache
    time.sleep(0.05)   # past the file system's clock tick, as any rewrite by hand would be
    photo.write_bytes(b"two photo")   # `cp -p`: other bytes, the same size and mtime
    _same_size_and_mtime(photo)
    assert storage.identity(str(photo)) == f"sha256:{hashlib.sha256(b'two photo').hexdigest()}"
    assert reads[0] == 2


def test_a_file_changed_just_before_hashing_is_not_cached(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(storage, "RACY_SECONDS", 3600)   # "just before", however slow the machine
    reads = _counting_digests(monkeypatch)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"fresh")
    storage.identity(str(photo))
    storage.identity(str(photo))
    assert reads[0] == 2   # a change in the same clock tick could keep its ctime: read again


def test_transient_errors_are_retried_and_counted_permanent_ones_raised_at_once() -> None:
    failures = iter([ConnectionResetError("reset by peer"), OSError(16, "SlowDown")])

    def flaky() -> str:
        for error in failures:
            raise error
        return "read"

    before = storage.retry_count()
    assert storage.with_retries(flaky, "reading x") == "read"
    assert storage.retry_count() - before == 2

    def missing() -> str:
        raise FileNotFoundError("s3://inputs/absent.parquet")

    with pytest.raises(FileNotFoundError):
        storage.with_retries(missing, "reading s3://inputs/absent.parquet")
    assert storage.retry_count() - before == 2

    def down() -> str:
        raise TimeoutError("read timed out")

    with pytest.raises(TimeoutError) as raised:
        storage.with_retries(down, "reading s3://inputs/x")
    assert raised.value.__notes__ == [f"reading s3://inputs/x: gave up after {storage.RETRY_ATTEMPTS} attempts"]
    assert storage.retry_count() - before == 2 + storage.RETRY_ATTEMPTS - 1


def test_object_storage_reads_survive_a_dropped_connection(s3, monkeypatch) -> None:
    """The first request of each kind for one object fails below the client's own retries
    (as a dropped connection that outlasts them would); storage tries again and counts it.
    A missing object fails at once."""
    import s3fs

    s3.pipe("inputs/a.txt", b"alt text")
    fs, _ = storage.filesystem("s3://inputs/a.txt")
    assert fs.config_kwargs == storage.S3_CONFIG
    real = s3fs.S3FileSystem._call_s3
    failed: set[str] = set()

    async def dropped_once(self, method, *args, **kwargs):
        if kwargs.get("Key") == "a.txt" and method not in failed:
            failed.add(method)
            raise ConnectionError(f"connection dropped during {method}")
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", dropped_once)
    before = storage.retry_count()
    assert storage.read_bytes("s3://inputs/a.txt") == b"alt text"
    assert storage.identity("s3://inputs/a.txt") == f"8:{hashlib.md5(b'alt text').hexdigest()}"   # the ETag
    assert storage.retry_count() - before == len(failed) == 2
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("s3://inputs/absent.txt")
    assert storage.retry_count() - before == 2
