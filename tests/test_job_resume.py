"""Crash and resume: kill the driver (SIGKILL) mid-run, then re-run the same run id. The committed set
is exact (one row per input), parts committed before the crash are untouched, nothing partial is visible."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.job_fixtures import committed_rows, run_cli

pytestmark = pytest.mark.slow
N_IMAGES = 24


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started (driver + its local Ray)
    except ProcessLookupError:
        pass


def test_kill_driver_then_resume(ray_local, model_args, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(src / f"img{i:03d}.png")
    out = tmp_path / "out"
    args = ["--input", str(src), "--output", str(out), "--run-id", "crashy", *model_args]
    args[args.index("--shard-size") + 1] = "2"
    args[args.index("--batch-size") + 1] = "2"
    args[args.index("--read-threads") + 1] = "2"
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.label", *args], cwd=os.getcwd(), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = out / "runs" / "crashy"
    try:
        deadline = time.time() + 240
        while len(list(run.glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, "the job finished or failed before it could be killed"
            assert time.time() < deadline, "no parts committed in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # the driver dies mid-run
        proc.wait(timeout=30)
    finally:
        _kill_group(proc)
    time.sleep(1)
    before = {p.name: p.read_bytes() for p in run.glob("part-*.parquet")}
    assert 2 <= len(before) < N_IMAGES // 2 and not (run / "_SUCCESS.json").exists()
    assert committed_rows(str(out)) == []  # an unfinished run is not committed output

    summary = run_cli(args)  # resume the same run id
    assert summary["run_id"] == "crashy" and summary["attempt"]["shards_resumed"] >= len(before)
    assert summary["attempt"]["images_labeled"] == N_IMAGES - 2 * summary["attempt"]["shards_resumed"]
    for name, data in before.items():
        assert (run / name).read_bytes() == data  # committed parts never rewritten
    rows = committed_rows(str(out))
    assert collections.Counter(r["source_uri"] for r in rows) == collections.Counter(str(p) for p in src.iterdir())
    assert all(r["status"] == "ok" for r in rows)
    assert not list(run.glob("*.tmp-*"))
    assert run_cli(args)["run_id"] == "crashy"  # a committed run id is a no-op
