"""Crash helpers for the reliability tests and ``bench/soak.py``: find our own descendant processes via
/proc, SIGKILL the job's segment actors, and run ``python -m jobs.label`` as a subprocess killed at a
chosen moment. Only processes started by this process (its descendants) are ever signalled, by pid."""
from __future__ import annotations

import collections
import io
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
ACTOR_MARK = "ray::SegmentStage"  # Ray titles an actor's worker process after its class


def _ppid_map() -> Dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    stat = f.read()
                out[int(d)] = int(stat[stat.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def descendants(root: int) -> List[int]:
    children = collections.defaultdict(list)
    for pid, ppid in _ppid_map().items():
        children[ppid].append(pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def actor_pids(root: Optional[int] = None) -> List[int]:
    """Live segment-actor worker processes among our descendants."""
    return [p for p in descendants(root or os.getpid()) if cmdline(p).startswith(ACTOR_MARK)]


def kill_pids(pids: List[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def write_images(folder: pathlib.Path, n: int, seed: int = 0) -> List[str]:
    """``n`` small random JPEGs (varied sizes); returns their names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32 + i % 7, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
        (folder / f"img-{i:03d}.jpg").write_bytes(buf.getvalue())
        names.append(f"img-{i:03d}.jpg")
    return names


def launch(args: List[str], log_path: pathlib.Path) -> subprocess.Popen:
    """``python -m jobs.label ARGS`` in its own session (its own local Ray), output to ``log_path``."""
    log = open(log_path, "ab")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ACCEPT_CLUSTER_SIDE_EFFECTS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "jobs.label", *args], cwd=REPO, stdout=log, stderr=log, env=env,
                            start_new_session=True)


def kill_driver_at(proc: subprocess.Popen, after_s: float, when=None, timeout: float = 300) -> bool:
    """SIGKILL the driver ``after_s`` seconds after launch, or, with ``when`` (a callable), ``after_s``
    seconds after ``when()`` first returns True (True), unless it exited first (False). Then SIGKILL
    whatever it had started (its local Ray) so nothing outlives the trial."""
    t_end = time.time() + (timeout if when else after_s)
    while time.time() < t_end:
        if proc.poll() is not None:
            return False
        if when is not None and when():
            when, t_end = None, time.time() + after_s
        time.sleep(0.05)
    family = descendants(proc.pid)
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.wait(timeout=30)
    time.sleep(0.5)
    kill_pids([p for p in family if os.path.exists(f"/proc/{p}")])
    return True


def finish(proc: subprocess.Popen, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            family = descendants(proc.pid)
            proc.kill()
            kill_pids(family)


def committed_names(output: str) -> collections.Counter:
    from tests.job_fixtures import committed_rows

    return collections.Counter(r["source_uri"].rsplit("/", 1)[-1] for r in committed_rows(output))
