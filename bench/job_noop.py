"""Benchmark: a scheduled run with nothing new to label (the hourly case between arrivals), before vs after.

    .venv/bin/python bench/job_noop.py --out bench/results/job_noop.json
    .venv/bin/python bench/job_noop.py --checkout /tmp/reslabel-old --out ...   # also time another checkout's code

One output folder is labeled once (8 images, random ViT-B/16 weights written to a file, a 3-class vocabulary
with 2 templates so the first run is short), then the same command runs again ``--repeats`` times with nothing
new: each a fresh ``python -m jobs.label`` process with its own local Ray, timed from launch to exit. With
``--checkout DIR`` the same repeats run DIR's code (``PYTHONPATH=DIR``) on the same output, interleaved with this
checkout's, so both are measured under the same load. The JSON has the wall seconds, the job's own account of
them (Ray start-up apart, from its summary line) and the CPU flags.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.job_throughput import cpu_flags, make_images, make_weights  # noqa: E402

_TOOK = re.compile(r"nothing to label.*\(([\d.]+) s, of which Ray start-up ([\d.]+) s")


def _run(code: pathlib.Path, args: List[str]) -> Dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "jobs.label", *args], cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"job failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out: Dict[str, object] = {"wall_seconds": round(wall, 2)}
    m = _TOOK.search(p.stdout)
    if m:
        out.update(job_seconds=float(m.group(1)), ray_start_seconds=float(m.group(2)))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkout", help="another checkout of reslabel to time the same way (the 'before')")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(tmp)
        make_images(d / "in", a.images)
        arch = make_weights(a.arch, d / "w.pt")
        (d / "vocab.txt").write_text("cat\nperson\nsky\n")
        (d / "templates.txt").write_text("a photo of a {}.\na bad photo of the {}.\n")
        args = ["--input", str(d / "in"), "--output", str(d / "out"), "--preset", "voc21", "--model", arch,
                "--weights", str(d / "w.pt"), "--vocabulary", str(d / "vocab.txt"), "--templates",
                str(d / "templates.txt"), "--num-actors", "1", "--cpus-per-actor", "1"]
        first = _run(ROOT, args)
        codes = {"this": ROOT, **({"checkout": pathlib.Path(a.checkout).resolve()} if a.checkout else {})}
        runs: Dict[str, List[Dict[str, object]]] = {k: [] for k in codes}
        for _ in range(a.repeats):
            for name, code in codes.items():
                runs[name].append(_run(code, args))
    result = dict(measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  machine=dict(cpus=os.cpu_count(), cpu_flags=cpu_flags(), python=sys.version.split()[0]),
                  arch=a.arch, images=a.images, first_run_wall_seconds=first["wall_seconds"],
                  noop={k: dict(runs=v, median_wall_seconds=statistics.median(r["wall_seconds"] for r in v))
                        for k, v in runs.items()})
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        pathlib.Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
