"""A real Ray head with its job server, for the `ray job submit` tests: ``ray start --head --block`` on free
ports with its own short ``--temp-dir``, token authentication on (Ray's default once ``~/.ray/auth_token``
exists; here with a token file of the test's own), the project's venv first on PATH (so the entrypoint's
``python`` is the venv's, as docs/job.md tells cluster users). Stopped by its pid: SIGKILL to the
``ray start`` process group and every descendant (never ``ray stop``, which would kill every Ray here).
"""
from __future__ import annotations

import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

from tests.crash_helpers import REPO, descendants, kill_pids

VENV_BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """One head node (2 CPUs) with the dashboard's job server on 127.0.0.1."""

    def __init__(self, env: Optional[Dict[str, str]] = None):
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # socket paths stay short
        token = self.tmp / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, **(env or {}), "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "PYTHONUNBUFFERED": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.dashboard_port = free_port()
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 120) -> "RayHead":
        cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", "--port", str(free_port()),
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
               "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
               "--metrics-export-port", str(free_port()), "--temp-dir", str(self.tmp / "ray"), "--num-cpus", "2",
               "--include-dashboard", "true"]
        log = open(self.tmp / "head.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("ray start exited:\n" + (self.tmp / "head.log").read_text()[-3000:])
            if self._responds() and self.cli("job", "list").returncode == 0:
                return self
            time.sleep(1.0)
        self.stop()
        raise RuntimeError("the Ray head's job server did not come up")

    def _responds(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/api/version", timeout=2)
        except urllib.error.HTTPError:
            return True  # 401 without a token: the server is up
        except OSError:
            return False
        return True

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``ray ARGS --address URL`` run from the repository root (so ``--working-dir .`` is the project)."""
        cmd = [os.path.join(VENV_BIN, "ray"), *args]
        if args[:2] in (("job", "list"), ("job", "status"), ("job", "stop"), ("job", "logs")):
            cmd += ["--address", self.url]
        return subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)

    def run_shell(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """A shell command line (e.g. the README's recipe) in the repository root with the head's client env."""
        return subprocess.run(["bash", "-c", command], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def submit(self, submission_id: str, entrypoint: List[str], wait: bool = True) -> subprocess.CompletedProcess:
        args = ["job", "submit", "--address", self.url, "--submission-id", submission_id, "--working-dir", "."]
        return self.cli(*args, *([] if wait else ["--no-wait"]), "--", *entrypoint)

    def status(self, submission_id: str) -> str:
        """SUCCEEDED, FAILED, STOPPED, RUNNING, PENDING (parsed from ``ray job status``)."""
        out = self.cli("job", "status", submission_id).stdout
        for text, word in ((f"Job '{submission_id}' succeeded", "SUCCEEDED"),
                           (f"Job '{submission_id}' failed", "FAILED"),
                           (f"Job '{submission_id}' was stopped", "STOPPED")):
            if text in out:
                return word
        found = re.search(rf"Status for job '{re.escape(submission_id)}': (\w+)", out)
        if found is None:
            raise AssertionError(f"no status in: {out}")
        return found.group(1)

    def logs(self, submission_id: str) -> str:
        return self.cli("job", "logs", submission_id).stdout

    def stop(self) -> None:
        kill_head(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


def kill_head(proc: Optional[subprocess.Popen]) -> None:
    """SIGKILL a ``ray start --head --block`` process group and every process it started (also those that
    left the group), then reap it. No ``ray stop``: other Ray instances on the machine are not touched."""
    if proc is None or proc.poll() is not None:
        return
    family = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    kill_pids(family + descendants(proc.pid))
    proc.wait(timeout=30)
