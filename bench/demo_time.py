"""Time the demo's labeling part (``scripts/demo.sh`` after its install step) in one checkout.

Runs the demo's two commands as the demo does, offline smoke mode (random ViT-B/16 weights: no network here),
in ``--repo`` (default: this checkout; pass another worktree to time it with the same interpreter):
``python -m jobs.label`` on the 4 bundled samples with the voc21 preset and the samples' vocabulary
(12 queries x 80 templates = 960 prompts), then ``python -m jobs.overlay``. Records the wall time of each, the
text-encoding span read from the job's own log lines (first ``text embeddings: encoding`` to the last
``batch n/n``), how many progress lines the output showed, the CPU flags and the load (the 2-core box is
shared: compare runs made side by side, not across machines).

    .venv/bin/python bench/demo_time.py --out bench/results/demo_after.json
    .venv/bin/python bench/demo_time.py --repo /path/to/main-checkout --out bench/results/demo_before.json
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench.machine import key_cpu_flags, write_report  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) pipeline\.model\.text INFO text embeddings: (.*)")


def _stamp(s: str) -> float:
    return datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=str(ROOT), help="checkout whose code runs (cwd and PYTHONPATH)")
    ap.add_argument("--log", help="also write the commands' output here")
    ap.add_argument("--out")
    a = ap.parse_args()
    repo = pathlib.Path(a.repo).resolve()
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    out_dir = pathlib.Path(tempfile.mkdtemp(prefix="reslabel-demo-"))
    label = [sys.executable, "-m", "jobs.label", "--input", "pipeline/data/samples", "--output", str(out_dir),
             "--preset", "voc21", "--vocabulary", "pipeline/data/samples/vocabulary.txt", "--random-weights",
             "--num-actors", "1", "--cpus-per-actor", "1"]
    load_before = os.getloadavg()
    t = time.perf_counter()
    p1 = subprocess.run(label, cwd=repo, env=env, capture_output=True, text=True)
    t_label = time.perf_counter() - t
    runs = sorted((out_dir / "runs").glob("*/"))
    t = time.perf_counter()
    p2 = subprocess.run([sys.executable, "-m", "jobs.overlay", "--run", str(runs[-1]) if runs else "none", "--out",
                         str(out_dir / "sheet.png"), "--n", "4", "--cols", "2", "--thumb", "320"],
                        cwd=repo, env=env, capture_output=True, text=True)
    t_overlay = time.perf_counter() - t
    output = p1.stdout + p1.stderr + p2.stdout + p2.stderr
    if a.log:
        pathlib.Path(a.log).write_text(output)
    text_lines = [(m.group(1), m.group(2)) for m in STAMP.finditer(output)]
    text_s = (_stamp(text_lines[-1][0]) - _stamp(text_lines[0][0])) if len(text_lines) > 1 else None
    report = dict(
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), cpu_flags=key_cpu_flags(),
                     loadavg_before=load_before, loadavg_after=os.getloadavg(),
                     note="2-core box shared with other engineers: timings noisy"),
        repo=str(repo), commit=subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True).stdout.strip(),
        mode="offline smoke (random ViT-B/16 weights), 4 sample images, 12 queries x 80 templates",
        exit_codes=dict(label=p1.returncode, overlay=p2.returncode),
        seconds=dict(label_job=round(t_label, 1), overlay=round(t_overlay, 1),
                     labeling_part_total=round(t_label + t_overlay, 1),
                     text_encoding_from_log=round(text_s, 1) if text_s is not None else None),
        text_progress_lines_in_output=len(text_lines),
        text_log=[msg for _, msg in text_lines],
    )
    write_report(report, a.out)


if __name__ == "__main__":
    main()
