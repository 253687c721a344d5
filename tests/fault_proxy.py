"""A small fault-injecting HTTP proxy for the S3 reliability tests, plus a restartable moto server.

``FaultProxy`` listens on 127.0.0.1 and forwards each request to an upstream (moto). Whether a request
is faulted is a pure function of (seed, method, path, how many times that method+path was seen), so
the same run gets the same faults whatever the thread interleaving, and a retried request draws again.
Faults: 503 SlowDown, 500 InternalError, a slow response, a dropped connection (request read, socket
closed without an answer). ``always_fail`` paths get a 503 on every attempt (retries exhausted).
``outage()`` closes the listener (connection refused) and the open connections, e.g. around a server
restart. Bounded: daemon threads, ``close()`` stops everything; used as a context manager by fixtures.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Set

FAULTS = ("503", "500", "slow", "drop")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclasses.dataclass
class FaultPlan:
    """Per-request probabilities of each fault (their sum is the fault rate)."""

    seed: int = 0
    p503: float = 0.03
    p500: float = 0.02
    pslow: float = 0.03
    pdrop: float = 0.02
    slow_seconds: float = 1.0
    max_consecutive: int = 2  # a method+path is never faulted more than this many times in a row
    always_fail: Set[str] = dataclasses.field(default_factory=set)  # URL paths answered 503 every time
    every_kind_by: int = 20  # requests 5, 10, 15, 20 get 503, 500, slow, drop: each kind happens at least once

    def draw(self, method: str, path: str, attempt: int) -> Optional[str]:
        h = hashlib.sha256(f"{self.seed}|{method}|{path}|{attempt}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        for name, p in zip(FAULTS, (self.p503, self.p500, self.pslow, self.pdrop)):
            if u < p:
                return name
            u -= p
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _any(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = proxy.decide(self.command, self.path)
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault in ("503", "500"):
            code, tag = (503, "SlowDown") if fault == "503" else (500, "InternalError")
            msg = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{tag}</Code>"
                   f"<Message>injected by fault proxy</Message></Error>").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(msg)
            return
        if fault == "slow":
            time.sleep(proxy.plan.slow_seconds)
        self._forward(body)

    def _forward(self, body: bytes) -> None:
        proxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "expect"}
        with proxy.inflight():
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
        self.send_response(resp.status, resp.reason)
        head = self.command == "HEAD"  # a HEAD answer keeps the object's Content-Length and has no body
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and (head or k.lower() != "content-length"):
                self.send_header(k, v)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: "FaultProxy"


class FaultProxy:
    """``with FaultProxy("127.0.0.1:PORT", FaultPlan(seed=1)) as p: ... p.url ... p.counts``"""

    def __init__(self, upstream: str, plan: FaultPlan, port: int = 0):
        host, port_s = upstream.replace("http://", "").split(":")
        self.upstream_host, self.upstream_port = host, int(port_s)
        self.plan = plan
        self.counts: Dict[str, int] = collections.Counter()  # fault name / "forwarded" / "refused" → count
        self._seen: Dict[tuple, int] = collections.Counter()
        self._streak: Dict[tuple, int] = collections.Counter()
        self._lock = threading.Lock()
        self._inflight = 0
        self._n = 0  # faultable requests seen
        self._idle = threading.Condition(self._lock)
        self.port = port
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self) -> None:
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # listener closed: new connections are refused
            self._server = None

    def decide(self, method: str, path: str) -> Optional[str]:
        key = (method, path.split("?")[0] if method != "GET" else path)
        with self._lock:
            attempt = self._seen[key]
            self._seen[key] += 1
            if path.startswith("/moto-api"):
                fault = None
            elif path.split("?")[0] in self.plan.always_fail:
                fault = "503"
            else:
                self._n += 1
                step = max(self.plan.every_kind_by // len(FAULTS), 1)
                forced = self._n % step == 0 and self._n // step <= len(FAULTS)
                fault = FAULTS[self._n // step - 1] if forced else self.plan.draw(method, key[1], attempt)
                if fault and fault != "slow" and self._streak[key] >= self.plan.max_consecutive:
                    fault = None
            self._streak[key] = self._streak[key] + 1 if fault and fault != "slow" else 0
            self.counts[fault or "forwarded"] += 1
            return fault

    class _Inflight:
        def __init__(self, proxy):
            self.p = proxy

        def __enter__(self):
            with self.p._lock:
                self.p._inflight += 1

        def __exit__(self, *exc):
            with self.p._lock:
                self.p._inflight -= 1
                self.p._idle.notify_all()

    def inflight(self) -> "_Inflight":
        return FaultProxy._Inflight(self)

    def outage_begin(self, drain_timeout: float = 30.0) -> None:
        """Refuse new connections and wait until no request is being forwarded upstream."""
        self._stop()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=drain_timeout)
        self.counts["outages"] += 1

    def outage_end(self) -> None:
        self._start()

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def faults_injected(self) -> int:
        return sum(self.counts[f] for f in FAULTS)


# ---- a moto server that can be restarted with its objects ---------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``moto_server`` on 127.0.0.1:port. moto keeps state in memory only, so ``restart()`` snapshots
    every bucket and object (direct to moto, not through the proxy), kills the process, starts a new one
    on the same port and puts the objects back: a real process restart that keeps the data, as S3 would."""

    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.restarts = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")

    def snapshot(self) -> Dict[str, Dict[str, bytes]]:
        c = self.client()
        state: Dict[str, Dict[str, bytes]] = {}
        for b in c.list_buckets().get("Buckets", []):
            objs = state.setdefault(b["Name"], {})
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
                for o in page.get("Contents", []):
                    objs[o["Key"]] = c.get_object(Bucket=b["Name"], Key=o["Key"])["Body"].read()
        return state

    def restore(self, state: Dict[str, Dict[str, bytes]]) -> None:
        c = self.client()
        for bucket, objs in state.items():
            c.create_bucket(Bucket=bucket)
            for key, data in objs.items():
                c.put_object(Bucket=bucket, Key=key, Body=data)

    def restart(self, down_seconds: float = 1.0) -> int:
        """Restart keeping every object; returns how many objects were carried over."""
        state = self.snapshot()
        self.stop()
        time.sleep(down_seconds)
        self.start()
        self.restore(state)
        self.restarts += 1
        return sum(len(v) for v in state.values())
