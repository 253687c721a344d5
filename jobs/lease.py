"""Run coordination per (output, job_hash): at most one run of a config plans and labels at a time.

A run holds a *lease* from before it looks for unfinished runs and plans until it commits (or fails). The lease
of config ``H`` under ``OUTPUT`` is a chain of files ``OUTPUT/_leases/H/lease-<epoch>.json``
(``schemas.layout``); **the file with the highest epoch is the lease**. Rules:

* **Acquire.** Read the highest epoch ``n``. None, released, or expired (``expires_at`` passed): create epoch
  ``n + 1`` *only if absent* (``storage.create_exclusive``: local ``os.link``, the ``O_EXCL`` of a complete file;
  S3 ``If-None-Match: *``). Of any number of drivers racing for ``n + 1`` exactly one create succeeds; the others
  re-read and find a live lease. Live: the run is in progress (``--if-running``: skip or wait).
* **Verify.** After its create of epoch ``k`` the winner lists the chain; if an epoch above ``k`` exists it lost
  (its listing was stale) and deletes its file. Why no two holders: a create of ``j > k`` after our listing needs
  its creator to have read epoch ``j - 1 >= k`` as expired or released; ``j - 1 = k`` is our fresh file (not
  expired unless we stop renewing for a TTL), and ``j - 1 > k`` existed before our verifying listing (epochs are
  created in order and a file is deleted only once a higher one exists), so we would have seen it.
* **Take over** an expired lease = create the next epoch: no delete-then-create, so two takers cannot both win
  (the loser's create of the same name fails). A taker never deletes what it did not create; the verified
  holder of ``k`` deletes epochs ``< k - 1`` (those can only be recreated by a stale driver, which then loses
  its own verification to ``k``).
* **Heartbeat.** A daemon thread rewrites the holder's file every ``ttl / 4`` s with ``expires_at = now + ttl``
  (only the holder writes its epoch once created). It checks that no higher epoch exists; if one does, or no
  renewal succeeded for ``ttl`` s, the lease is *lost*: ``Lease.check()`` raises ``LeaseLost`` and the run stops
  before it registers or commits (parts it already wrote are complete and no-clobber; the next run resumes).
* **Release** on commit, on "nothing to label" and on any error: the file is rewritten with ``released: true``,
  so the next run starts at once. A SIGKILLed driver releases nothing: its lease expires ``ttl`` s after its
  last renewal, and then (only then) its unfinished run is resumed.

Expiry compares ``expires_at`` (the holder's clock) with the reader's clock: drivers' clocks must agree to well
within the TTL (NTP). ``--lease-ttl`` (default 120 s) trades how soon a crashed driver's run can be resumed
against how long a stalled driver (GC, network) may miss renewals before it loses the lease.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Dict, Optional, Tuple

from jobs import storage
from schemas import layout

log = logging.getLogger("reslabel.lease")
IF_RUNNING = ("skip", "wait")  # what a run does when a live run of its config holds the lease
DEFAULT_IF_RUNNING = "skip"
DEFAULT_TTL_S = 120.0
MIN_TTL_S = 2.0
EXIT_SKIPPED = 75  # --if-running skip found a live run (EX_TEMPFAIL: nothing was done, try again later)


class LeaseLost(RuntimeError):
    """This run's lease was taken over or could not be renewed for a TTL: it must not register or commit."""


class RunInProgress(RuntimeError):
    """A live run of the same config holds the lease and ``--if-running skip`` was asked."""

    def __init__(self, message: str, body: Dict):
        super().__init__(message)
        self.body = body


def lease_dir(output: str, job_hash: str) -> str:
    return storage.join(output, layout.LEASES, job_hash)


def _chain(directory: str) -> Dict[int, str]:
    """``{epoch: uri}`` of the lease files under ``directory``."""
    return {e: u for u in storage.list_dir(directory) if (e := layout.lease_epoch_of(u)) is not None}


def current(output: str, job_hash: str) -> Optional[Tuple[int, Dict]]:
    """``(epoch, body)`` of the highest lease file of the config, or None when there is none."""
    chain = _chain(lease_dir(output, job_hash))
    while chain:
        epoch = max(chain)
        try:
            return epoch, storage.read_json(chain.pop(epoch))
        except FileNotFoundError:  # deleted by the holder's clean-up between listing and reading: look again
            chain = _chain(lease_dir(output, job_hash))
    return None


def is_live(body: Dict, now: Optional[float] = None) -> bool:
    """True while the lease is neither released nor past its ``expires_at`` (Unix seconds)."""
    return not body.get("released") and float(body["expires_at"]) > (time.time() if now is None else now)


def describe(body: Dict, now: Optional[float] = None) -> str:
    """One phrase naming a lease holder: its run (or that it is still planning), host, pid, renewal, expiry."""
    now = time.time() if now is None else now
    what = f"run {body['run_id']}" if body.get("run_id") else "a run still planning"
    return (f"{what} (driver {body.get('host')} pid {body.get('pid')}, lease epoch {body['epoch']}, renewed "
            f"{now - float(body['renewed_at']):.0f} s ago, expires in {float(body['expires_at']) - now:.0f} s)")


class Lease:
    """This driver's lease of (``output``, ``job_hash``); see the module docstring. Use ``acquire`` (or
    ``hold``), then ``update(run_id=...)``, ``check()`` before registering and committing, ``release()``."""

    def __init__(self, output: str, job_hash: str, ttl_s: float = DEFAULT_TTL_S):
        self.output, self.job_hash, self.ttl_s = output, job_hash, float(ttl_s)
        self.dir = lease_dir(output, job_hash)
        self.holder = uuid.uuid4().hex
        self.epoch: Optional[int] = None
        self.body: Dict = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lost: Optional[str] = None
        self._last_renewal = 0.0  # time.monotonic() of the last successful write

    @property
    def uri(self) -> str:
        assert self.epoch is not None
        return storage.join(self.dir, layout.lease_name(self.epoch))

    def _new_body(self, epoch: int) -> Dict:
        now = time.time()
        return dict(job_hash=self.job_hash, epoch=epoch, holder=self.holder, host=socket.gethostname(),
                    pid=os.getpid(), run_id=None, state="planning", ttl_seconds=self.ttl_s, acquired_at=now,
                    renewed_at=now, expires_at=now + self.ttl_s, released=False)

    @staticmethod
    def _encode(body: Dict) -> bytes:
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    def try_acquire(self) -> Optional[Dict]:
        """One attempt: None when this driver now holds the lease, else the live holder's body."""
        while True:
            found = current(self.output, self.job_hash)
            if found is not None and is_live(found[1]):
                return found[1]
            epoch = 1 if found is None else found[0] + 1
            body = self._new_body(epoch)
            if not storage.create_exclusive(storage.join(self.dir, layout.lease_name(epoch)), self._encode(body)):
                continue  # another driver created this epoch first: look at what it holds
            self.epoch, self.body = epoch, body
            chain = _chain(self.dir)
            if max(chain) > epoch:  # our listing was stale: a higher epoch is the lease
                self._delete(epoch)
                self.epoch = None
                continue
            self._last_renewal = time.monotonic()
            for old in (e for e in chain if e < epoch - 1):
                self._delete(old)
            if found is not None and not found[1].get("released"):
                log.warning("lease of config %s: took over the expired lease of %s", self.job_hash,
                            describe(found[1]))
            return None

    def _delete(self, epoch: int) -> None:
        try:
            storage.uris.remove(storage.normalize(storage.join(self.dir, layout.lease_name(epoch))))
        except (FileNotFoundError, OSError) as e:
            log.debug("could not delete lease epoch %d: %s", epoch, e)

    def acquire(self, if_running: str = DEFAULT_IF_RUNNING, progress_every_s: float = 30.0,
                poll_s: Optional[float] = None) -> "Lease":
        """Hold the lease and start the heartbeat. A live holder: ``skip`` raises ``RunInProgress``; ``wait``
        polls (logging what it waits for every ``progress_every_s``) until it is released or expires."""
        if if_running not in IF_RUNNING:
            raise ValueError(f"--if-running {if_running!r}; valid: {', '.join(IF_RUNNING)}")
        storage.check_conditional_create(storage.join(self.output, layout.LEASES))
        poll_s = poll_s if poll_s is not None else min(5.0, max(0.2, self.ttl_s / 8))
        last_log = None
        while True:
            holder = self.try_acquire()
            if holder is None:
                break
            if if_running == "skip":
                raise RunInProgress(f"skipped: {describe(holder)} of this config ({self.job_hash}) is in progress "
                                    f"under {self.output}; --if-running skip exits {EXIT_SKIPPED} without labeling",
                                    holder)
            if last_log is None or time.monotonic() - last_log >= progress_every_s:
                log.warning("waiting for %s of this config (%s) under %s to commit or expire (--if-running wait); "
                            "then this run plans only inputs no committed run holds", describe(holder),
                            self.job_hash, self.output)
                last_log = time.monotonic()
            time.sleep(poll_s)
        log.info("lease of config %s: epoch %d held (ttl %g s) at %s", self.job_hash, self.epoch, self.ttl_s,
                 self.uri)
        self._thread = threading.Thread(target=self._heartbeat, name="reslabel-lease", daemon=True)
        self._thread.start()
        return self

    def _write(self, **changes) -> None:
        """Rewrite our epoch's file (only its holder writes it once created), unless a higher epoch exists."""
        with self._lock:
            chain = _chain(self.dir)
            if self.epoch not in chain or max(chain) != self.epoch:
                raise LeaseLost(f"lease epoch {self.epoch} of config {self.job_hash} was taken over "
                                f"(epochs now {sorted(chain)[-3:]})")
            now = time.time()
            body = {**self.body, **changes, "renewed_at": now}
            if not body.get("released"):
                body["expires_at"] = now + self.ttl_s
            storage.retrying(lambda: storage.uris.write_bytes(storage.normalize(self.uri), self._encode(body)),
                             f"renew lease {self.uri}", attempts=3)
            self.body = body
            self._last_renewal = time.monotonic()

    def _heartbeat(self) -> None:
        interval = self.ttl_s / 4
        while not self._stop.wait(interval):
            try:
                self._write()
            except LeaseLost as e:
                self._lost = str(e)
            except Exception as e:  # noqa: BLE001 - a failed renewal is retried; a TTL of them loses the lease
                log.warning("lease of config %s: renewal failed (%s: %s); retrying", self.job_hash,
                            type(e).__name__, e)
            if self._lost is None and time.monotonic() - self._last_renewal > self.ttl_s:
                self._lost = f"lease of config {self.job_hash} not renewed for {self.ttl_s:g} s (--lease-ttl)"
            if self._lost:
                log.error("%s: this run stops before it registers or commits anything more; its committed "
                          "parts stay and the next run resumes it", self._lost)
                return

    def check(self) -> None:
        """Raise ``LeaseLost`` when this driver no longer holds the lease."""
        if self._lost is None and self.epoch is not None \
                and time.monotonic() - self._last_renewal > self.ttl_s:
            self._lost = f"lease of config {self.job_hash} not renewed for {self.ttl_s:g} s (--lease-ttl)"
        if self._lost:
            raise LeaseLost(self._lost)

    def update(self, **fields) -> None:
        """Record ``run_id``/``state`` in the lease (what a waiting or skipped run names)."""
        self.check()
        self._write(**fields)

    def release(self, state: str = "released") -> None:
        """Stop the heartbeat and mark the lease released (a no-op when it was lost or never held)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.epoch is None or self._lost:
            return
        try:
            self._write(released=True, state=state)
        except Exception as e:  # noqa: BLE001 - then it expires after the TTL, as after a crash
            log.warning("lease of config %s: release failed (%s); it expires in %g s", self.job_hash, e, self.ttl_s)
        self.epoch = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release("released" if exc_type is None else "failed")
