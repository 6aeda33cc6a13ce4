"""Publishing a build's tables: immutable versions, one commit object, one writer at a time.

Object stores have no atomic rename of a folder, so a build never writes into the tables a
reader may be reading. The protocol, on local disk and on every object store alike:

- **Versions are immutable.** A run writes its tables under ``<output>/_versions/<run_id>/``
  (``images/``, ``entities/`` ...) and nothing else ever writes there.
- **``<output>/manifest.json`` is the commit point.** It is written last, as one object (one
  PUT on object storage, temp + rename on a local disk: both atomic), and names the folder of
  every table of the current version (``tables``: paths relative to the output). Before it is
  written, readers see the previous version whole; after, the new one whole. A run that dies
  before it leaves the previous version current; its unreferenced folder is removed by the
  next run.
- **Readers resolve the version once**: :func:`table_uri` reads the manifest and returns the
  table's folder, which pandas, Spark or DuckDB then read as a plain parquet folder.
- **Retention rule**: publishing version N deletes every version except N and N-1 (the
  manifest names N-1 as ``previous_run_id``). A reader that resolved a version can read it
  until two later builds have published (keep readers shorter than the time between two
  builds, or copy what you need).
- **One writer**: a build holds ``<output>/_lease.json`` (run id, host, pid, heartbeat) from
  planning to publishing, renewed by a heartbeat thread. A second build on the same output
  fails fast with :class:`LeaseHeldError`. A lease whose holder is gone is taken over: at once
  when the holder was a process on this host that no longer exists, otherwise once its
  heartbeat is older than ``ttl_s``. Just before the commit the writer checks the lease is
  still its own (:meth:`Lease.check`), so a writer that lost it (stalled past its TTL and was
  taken over) does not publish.

Named fault points (:func:`fault_point`) let tests kill a build at each step of this
sequence; they do nothing unless ``I2E_FAULT`` names them.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Optional

from i2e_engine import storage

MANIFEST = "manifest.json"
VERSIONS = "_versions"
LEASE = "_lease.json"
LEASE_TTL_S = 120.0   # a holder silent this long is taken to be gone; renewed every quarter of it


class LeaseHeldError(RuntimeError):
    """Another build holds the output's lease."""


class LeaseLostError(RuntimeError):
    """This build's lease was taken over (it stalled past the TTL); it must not publish."""


def fault_point(name: str) -> None:
    """A named step of the build where a test can inject a fault: ``I2E_FAULT=<name>:kill``
    (SIGKILL this process, as ``kill -9`` would), ``<name>:raise`` or ``<name>:sleep=<s>``.
    Does nothing unless ``I2E_FAULT`` names this point."""
    point, _, action = os.environ.get("I2E_FAULT", "").partition(":")
    if point != name:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep="):
        time.sleep(float(action.partition("=")[2]))
    else:
        raise RuntimeError(f"fault injected at {name}")


# ----------------------------------------------------------------------------- reading

def version_folder(out: str, run_id: str) -> str:
    """Where run ``run_id`` writes its tables (immutable once written)."""
    return storage.join(out, VERSIONS, run_id)


def read_manifest(out: str) -> dict:
    """The current version's manifest (the commit object)."""
    path = storage.join(storage.normalize(out), MANIFEST)
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{out}: no {MANIFEST}, so no build has published tables there yet") from None


def table_uri(out: str, table: str, manifest: Optional[dict] = None) -> str:
    """The folder of ``table`` in the current version of the build at ``out``: a plain folder of
    parquet parts that pandas, Spark or DuckDB read as they are, and that no build changes::

        pd.read_parquet(table_uri("s3://bucket/i2e", "images"))
    """
    manifest = read_manifest(out) if manifest is None else manifest
    tables = manifest.get("tables")
    if not tables:
        raise ValueError(f"{out}/{MANIFEST} names no table folders (written by an i2e before versioned "
                         "publishing); rebuild the output")
    if table not in tables:
        raise KeyError(f"{out} has no table {table!r}; it has {sorted(tables)}")
    return storage.join(storage.normalize(out), tables[table])


# ----------------------------------------------------------------------------- the lease

@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    token: str
    host: str
    pid: int
    heartbeat: float     # seconds since the epoch, renewed every ttl_s / 4
    ttl_s: float

    def describe(self, now: float) -> str:
        return (f"run {self.run_id} (pid {self.pid} on {self.host}, last heartbeat "
                f"{now - self.heartbeat:.0f} s ago)")

    def holder_is_gone(self, now: float) -> bool:
        """A process of this host that no longer exists, or a heartbeat older than the TTL."""
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass   # alive, another user's
        return now - self.heartbeat > self.ttl_s


class Lease:
    """The single-writer lease of one output, held from planning to publishing.

    On a local disk the lease file is created exclusively (``O_EXCL``). Object stores here have
    no create-if-absent, so a new lease is written, then read back after a short settle time:
    of two builds starting within that time, at most one finds its own token (both may fail,
    which is safe). The commit is fenced by :meth:`check` either way.
    """

    SETTLE_S = 1.0

    def __init__(self, out: str, run_id: str, ttl_s: float = LEASE_TTL_S):
        self.out = out
        self.path = storage.join(out, LEASE)
        self.record = LeaseRecord(run_id=run_id, token=uuid.uuid4().hex, host=socket.gethostname(),
                                  pid=os.getpid(), heartbeat=time.time(), ttl_s=ttl_s)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost = False

    def __getstate__(self) -> dict:
        """A plan shipped to workers carries an inert copy: the heartbeat stays with the driver."""
        return {**self.__dict__, "_stop": None, "_thread": None}

    def _read(self) -> Optional[LeaseRecord]:
        try:
            return LeaseRecord(**json.loads(storage.read_text(self.path)))
        except FileNotFoundError:
            return None

    def _is_mine(self, record: Optional[LeaseRecord]) -> bool:
        return record is not None and record.token == self.record.token

    def _data(self) -> bytes:
        return json.dumps(asdict(self.record)).encode()

    def _create(self) -> bool:
        """Write the lease if no lease file exists; True when this build now holds it."""
        if storage.is_local(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._data())
            return True
        if self._read() is not None:
            return False
        storage.write_bytes(self.path, self._data())
        time.sleep(self.SETTLE_S)
        return self._is_mine(self._read())

    def acquire(self) -> "Lease":
        """Take the lease (taking over one whose holder is gone) and start the heartbeat."""
        if not self._create():
            holder, now = self._read(), time.time()
            if holder is not None and not holder.holder_is_gone(now):
                raise LeaseHeldError(
                    f"{self.out}: another build is writing this output: "
                    f"{holder.describe(now)}. Wait for it to finish; a lease whose holder died is taken over "
                    f"after {holder.ttl_s:.0f} s without heartbeat (at once for a dead process of this host).")
            if holder is not None and self._read() == holder:   # still the stale one: remove it
                storage.remove(self.path)
            if not self._create():
                raise LeaseHeldError(f"{self.out}: another build took this output's lease at the same moment")
        self._thread = threading.Thread(target=self._beat, name="i2e-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.record.ttl_s / 4):
            if not self._is_mine(self._read()):
                self.lost = True
                return
            self.record = replace(self.record, heartbeat=time.time())
            storage.write_bytes(self.path, self._data())

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless the lease file is still this build's."""
        current = self._read()
        if self.lost or not self._is_mine(current):
            holder = current.describe(time.time()) if current else "nobody"
            raise LeaseLostError(f"{self.path}: this build ({self.record.run_id}) lost its lease, now held by "
                                 f"{holder}; its tables were not published")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this build's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._is_mine(self._read()):
            storage.remove(self.path)


# ----------------------------------------------------------------------------- publishing

def prune_versions(out: str, keep: set[str]) -> list[str]:
    """Delete every version folder of ``out`` not in ``keep`` (run ids): older versions past
    the retention rule and crashed runs' folders. Only the lease holder calls this."""
    removed = []
    for folder in storage.listdir(storage.join(out, VERSIONS)):
        if storage.name(folder) not in keep:
            storage.remove(folder)
            removed.append(storage.name(folder))
    return removed


def current_versions(out: str) -> set[str]:
    """The run ids a reader may be on: the current version and the one before it."""
    try:
        manifest = read_manifest(out)
    except FileNotFoundError:
        return set()
    return {run for run in (manifest.get("run_id"), manifest.get("previous_run_id")) if run}


def commit(out: str, manifest: dict, lease: Lease) -> dict:
    """Make ``manifest`` (with ``tables`` naming folders under this run's version) the current
    version: fenced by the lease, one atomic write, then old versions past the retention rule
    are removed. Returns the manifest as written."""
    try:
        previous = read_manifest(out).get("run_id")
    except FileNotFoundError:
        previous = None
    manifest = {**manifest, "previous_run_id": previous}
    lease.check()
    fault_point("publish.before_commit")
    storage.write_text(storage.join(out, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    fault_point("publish.after_commit")
    prune_versions(out, {manifest["run_id"], *([previous] if previous else [])})
    return manifest
