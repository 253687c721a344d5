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
    # the killed driver's lease stays live for --lease-ttl: the resume waits for it to expire (jobs/lease.py)
    args = ["--input", str(src), "--output", str(out), "--run-id", "crashy", *model_args, "--if-running", "wait",
            "--lease-ttl", "5"]
    args[args.index("--shard-size") + 1] = "2"
    args[args.index("--images-per-call") + 1] = "2"
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


def test_an_unfinished_layout_1_run_resumes(ray_local, model_args, tmp_path):
    """A run registered by the previous layout (``_plan.parquet``: the sorted index + ``_shard``, its meta in the
    footer) and left unfinished is resumed by this version: only its missing shards are labeled."""
    import io
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs import commit
    from jobs.planner import PlanLocator
    from pipeline.labels.reader import open_run
    from schemas import layout

    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):
        Image.fromarray(np.full((40, 56, 3), 30 * i, np.uint8)).save(src / f"img{i}.png")
    out = tmp_path / "out"
    args = ["--input", str(src), "--output", str(out), "--run-id", "legacy", *model_args]
    args[args.index("--shard-size") + 1] = "2"
    run_cli(args)
    run = out / "runs" / "legacy"
    manifest = commit.read_manifest(str(run))
    plan = PlanLocator.of(str(run), manifest["plan_files"], 2)
    table = pa.concat_tables([plan.read(k) for k in range(plan.shards)])
    table = table.append_column("_shard", pa.array([i // 2 for i in range(table.num_rows)], pa.int32()))
    meta = {k: v for k, v in manifest.items() if k not in ("plan_files", "layout", "shard_size", "input_kind")}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({layout.LEGACY_PLAN_KEY: json.dumps(meta).encode()}), buf)
    (run / layout.LEGACY_PLAN).write_bytes(buf.getvalue())  # the run as layout 1 wrote it ...
    (run / layout.PLAN_MANIFEST).unlink()
    shutil.rmtree(run / layout.PLAN_DIR)
    (run / layout.SUCCESS).unlink()  # ... unfinished: two of its four parts missing
    kept = {p.name: p.read_bytes() for p in sorted(run.glob("part-*.parquet"))[:2]}
    for p in sorted(run.glob("part-*.parquet"))[2:]:
        p.unlink()

    summary = run_cli(args)
    assert summary["attempt"]["shards_resumed"] == 2 and summary["attempt"]["images_labeled"] == 4
    assert {n: (run / n).read_bytes() for n in kept} == kept
    rows = committed_rows(str(out))
    assert collections.Counter(r["source_uri"] for r in rows) == collections.Counter(str(p) for p in src.iterdir())
    assert open_run(str(run)).excluded_category_ids == manifest["excluded_category_ids"]
