"""Cluster-scale benchmark of the job machinery: what the driver pays per planned and per labeled image.

    .venv/bin/python bench/job_scale.py plan --sizes 100000 1000000 10000000 --out bench/results/job_scale_plan.json
    .venv/bin/python bench/job_scale.py incremental --committed 1000000 --new 1000 \\
        --out bench/results/job_scale_incremental.json
    .venv/bin/python bench/job_scale.py label --sizes 1000 10000 100000 --out bench/results/job_scale_label.json
    .venv/bin/python bench/job_scale.py label --sizes 1000 --stage tiny --out bench/results/job_scale_label_tiny.json
    .venv/bin/python bench/job_scale.py label --sizes 10000 --cluster --out bench/results/job_scale_cluster.json

Every measurement runs in a fresh driver process (this script re-run as a child) with its own local Ray (or
connected to a 3-node ``ray.cluster_utils.Cluster`` with ``--cluster``), so its peak RSS is the driver's own
(``ru_maxrss``) and nothing leaks between sizes.

* ``plan``: planning only (``jobs.planner``: one listing, index tasks, reduce tasks, plan files) over synthetic
  inputs: a manifest (Parquet files of 100,000 URIs each, no id column: ids are hashed) and img2dataset-layout
  Parquet (files of 10,000 rows, ``key`` + a 2-byte ``jpg``). Driver seconds and peak RSS.
* ``incremental``: a manifest of ``committed + new`` URIs planned against committed part files (1,000 ids each)
  holding ``committed`` of them: the plan must hold exactly ``new``.
* ``label``: the whole job over 128x128 JPEGs (``--shard-size``, default 256) with the **stand-in segment stage**
  (``StandInStage`` below: the actor skips the model and returns ``ok`` rows without segments; benchmark only,
  never reachable from the job's CLI), or ``--stage tiny`` (the real stage, tiny random model). From the run's
  ``_SUCCESS.json``: images/s of the label phase, the driver's CPU seconds during it (per labeled row), and
  the driver's peak RSS.

Record the machine (``machine`` in the JSON) with the numbers; the VM is shared: compare within one run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.stages import SegmentStage  # noqa: E402 - after the path setup above


class StandInStage(SegmentStage):
    """Benchmark stand-in for the segment actor: same inputs and outputs, no model (every decoded image becomes
    an ``ok`` row with no segments; failures keep their status). Times the machinery around the model."""

    def __init__(self, *, provenance, run_id, images_per_call, run=None, part_metadata=None, **_ignored):
        self.provenance = {k: provenance[k] for k in ("method", "base", "preset", "model", "weights_digest",
                                                       "vocabulary_hash", "segmenter_hash", "job_hash", "code_version")}
        self.run_id, self.images_per_call, self.exclude = run_id, int(images_per_call or 4), set()
        self.run, self.part_metadata = run, dict(part_metadata or {})  # or each call's context

    def _segment(self, recs: List[Dict]) -> List:
        return [None] * len(recs)


def machine() -> Dict:
    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1]
    except (OSError, StopIteration):
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    return dict(platform=platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
                cpu_flags=[f for f in wanted if f in flags.split()])


# ---- synthetic inputs ------------------------------------------------------------------------------------
def write_manifests(d: pathlib.Path, n: int, per_file: int = 100_000, prefix: str = "s3://bucket/img") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, n, per_file)):
        uris = pa.array([f"{prefix}/{i:09d}.jpg" for i in range(start, min(n, start + per_file))])
        pq.write_table(pa.table({"uri": uris}), d / f"manifest-{f:05d}.parquet")


def write_img2dataset(d: pathlib.Path, n: int, per_file: int = 10_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, n, per_file)):
        keys = [f"{i:09d}" for i in range(start, min(n, start + per_file))]
        pq.write_table(pa.table({"key": keys, "jpg": pa.array([b"\xff\xd8"] * len(keys), pa.binary())}),
                       d / f"{f:05d}.parquet")


def write_committed_parts(d: pathlib.Path, n: int, per_part: int = 1000, prefix: str = "s3://bucket/img") -> List[str]:
    """Part files (image_id, status) holding the ids of the manifest's first ``n`` URIs, all ``ok``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.inputs import stable_id

    d.mkdir(parents=True, exist_ok=True)
    parts = []
    for k, start in enumerate(range(0, n, per_part)):
        ids = [stable_id(f"{prefix}/{i:09d}.jpg") for i in range(start, min(n, start + per_part))]
        path = d / f"part-{k:05d}.parquet"
        pq.write_table(pa.table({"image_id": ids, "status": ["ok"] * len(ids)}), path)
        parts.append(str(path))
    return parts


def write_jpegs(d: pathlib.Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tiles = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        tiles.append(buf.getvalue())
    sub = None
    for i in range(n):
        if i % 10_000 == 0:
            sub = d / f"{i // 10_000:04d}"
            sub.mkdir(exist_ok=True)
        (sub / f"img{i:07d}.jpg").write_bytes(tiles[i % len(tiles)])


# ---- child processes (the measured drivers) --------------------------------------------------------------
def child_plan(args) -> Dict:
    import resource

    import ray

    from jobs.config import RETRY_POLICIES
    from jobs.inputs import InputOptions
    from jobs.planner import Planner

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    parts = json.loads(pathlib.Path(args.done).read_text()) if args.done else []
    t0 = time.perf_counter()
    planner = Planner(InputOptions(), RETRY_POLICIES["transient"], None)
    indexed = planner.index(args.input, args.format, args.run + "-staging")
    t_index = time.perf_counter() - t0
    planned = planner.write_plan(indexed, args.run, "bench", 256, parts)
    planner.discard(args.run + "-staging")
    return dict(seconds=round(time.perf_counter() - t0, 2), index_seconds=round(t_index, 2),
                planned=planned.rows, candidates=planned.candidates, excluded=planned.excluded,
                buckets=indexed.buckets, units=len(indexed.units),
                driver_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


def child_label(args) -> Dict:
    from jobs.label import config_from_args
    from jobs.runner import run_job

    stage = StandInStage if args.stage == "standin" else SegmentStage
    cfg = config_from_args(json.loads(args.job_args))
    summary = run_job(cfg, segment_stage=stage)
    a = summary["attempt"]
    return dict(rows=summary["rows"], images_per_second=a["images_per_second"], label_seconds=a["label_seconds"],
                wall_seconds=a["wall_seconds"], driver_cpu_label_seconds=a["driver_cpu_label_seconds"],
                driver_cpu_ms_per_row=round(1000 * a["driver_cpu_label_seconds"] / max(summary["rows"], 1), 4),
                driver_peak_rss_mib=a["driver_peak_rss_mib"], by_status=summary["by_status"])


def run_child(mode: str, extra: List[str], env=None) -> Dict:
    done = subprocess.run([sys.executable, __file__, mode, *extra], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the benchmarks --------------------------------------------------------------------------------------
def bench_plan(args, tmp: pathlib.Path) -> List[Dict]:
    out = []
    for kind, writer in (("manifest", write_manifests), ("parquet", write_img2dataset)):
        for n in args.sizes:
            d = tmp / f"{kind}-{n}"
            t0 = time.perf_counter()
            writer(d, n)
            made = time.perf_counter() - t0
            r = run_child("_plan", ["--input", str(d), "--format", kind, "--run", str(tmp / f"run-{kind}-{n}")])
            r.update(kind=kind, n=n, generate_seconds=round(made, 1))
            print(json.dumps(r), flush=True)
            out.append(r)
    return out


def bench_incremental(args, tmp: pathlib.Path) -> List[Dict]:
    d = tmp / "manifest"
    write_manifests(d, args.committed + args.new)
    parts = write_committed_parts(tmp / "old-run", args.committed)
    (tmp / "done.json").write_text(json.dumps(parts))
    r = run_child("_plan", ["--input", str(d), "--format", "manifest", "--run", str(tmp / "run"),
                            "--done", str(tmp / "done.json")])
    r.update(committed=args.committed, new=args.new, committed_parts=len(parts))
    print(json.dumps(r), flush=True)
    return [r]


def _label_args(src: pathlib.Path, out: pathlib.Path, tmp: pathlib.Path, args) -> List[str]:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import TINY_ARCH, make_openclip_model

    weights = tmp / "tiny.pt"
    if not weights.exists():
        import torch

        torch.save(make_openclip_model(TINY_ARCH).state_dict(), weights)
    (tmp / "vocab.txt").write_text("sky\ncat\ndog\n")
    (tmp / "templates.txt").write_text("a photo of a {}.\n")
    return ["--input", str(src), "--output", str(out), "--preset", "voc21", "--model", TINY_ARCH, "--weights",
            str(weights), "--vocabulary", str(tmp / "vocab.txt"), "--templates", str(tmp / "templates.txt"),
            "--shard-size", str(args.shard_size), "--num-actors", "1", "--cpus-per-actor", "1"]


def bench_label(args, tmp: pathlib.Path) -> List[Dict]:
    out = []
    cluster = None
    env = {}
    if args.cluster:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False))
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        env = {"RAY_ADDRESS": cluster.address}
    try:
        for n in args.sizes:
            src = tmp / f"jpegs-{n}"
            write_jpegs(src, n)
            job = _label_args(src, tmp / f"out-{n}", tmp, args) + (["--shared-fs"] if args.cluster else [])
            r = run_child("_label", ["--stage", args.stage, "--job-args", json.dumps(job)], env=env)
            r.update(n=n, stage=args.stage, shard_size=args.shard_size, nodes=3 if args.cluster else 1)
            print(json.dumps(r), flush=True)
            out.append(r)
    finally:
        if cluster is not None:
            cluster.shutdown()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_plan", "_label"):
        p = argparse.ArgumentParser()
        p.add_argument("mode")
        p.add_argument("--input"), p.add_argument("--format"), p.add_argument("--run"), p.add_argument("--done")
        p.add_argument("--stage"), p.add_argument("--job-args")
        a = p.parse_args()
        print(json.dumps(child_plan(a) if a.mode == "_plan" else child_label(a)))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("plan", "incremental", "label"))
    p.add_argument("--sizes", type=int, nargs="+", default=[1000])
    p.add_argument("--committed", type=int, default=1_000_000)
    p.add_argument("--new", type=int, default=1000)
    p.add_argument("--stage", choices=("standin", "tiny"), default="standin")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--cluster", action="store_true", help="a 3-node ray.cluster_utils.Cluster on this machine")
    p.add_argument("--out")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="job-scale-") as tmp:
        fn = {"plan": bench_plan, "incremental": bench_incremental, "label": bench_label}[a.mode]
        results = fn(a, pathlib.Path(tmp))
    record = dict(machine=machine(), measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), mode=a.mode,
                  results=results)
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
