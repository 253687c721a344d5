"""The machinery benchmark of ``bench/job_scale.py label`` run against an older checkout of reslabel, for a
before/after ratio measured on the same machine in the same session.

    git worktree add /tmp/reslabel-old d43b727        # the commit before workers wrote the parts
    .venv/bin/python bench/job_scale_baseline.py --checkout /tmp/reslabel-old --images 30000 \\
        --out bench/results/job_scale_baseline.json

It writes ``--images`` 128x128 JPEGs, runs that checkout's job in a child process with that checkout first on
``sys.path`` and its segment stage replaced by a stand-in with the same semantics as ``job_scale.StandInStage``
(no model; decoded images become ``ok`` rows without segments), then this checkout's job on the same images,
and records both: images/s of the label phase, driver CPU seconds (the whole job for the old checkout, which
records no per-phase figure; the label phase for this one) and driver peak RSS.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
CHILD = '''
import json, resource, sys, time
sys.path.insert(0, {checkout!r})
import jobs.runner as runner
from jobs.label import config_from_args
from jobs.stages import SegmentStage

class StandIn(SegmentStage):
    def __init__(self, *, provenance, run_id, **_):
        self.provenance = {{k: provenance[k] for k in ("method", "base", "preset", "model", "weights_digest",
                                                        "vocabulary_hash", "segmenter_hash", "job_hash", \
"code_version")}}
        self.run_id, self.exclude = run_id, set()

    def _segment(self, recs):
        return [None] * len(recs)

runner.SegmentStage = StandIn
c0 = time.process_time()
s = runner.run_job(config_from_args(json.loads({job_args!r})))
print(json.dumps(dict(rows=s["rows"], images_per_second=s["attempt"]["images_per_second"],
                      label_seconds=s["attempt"]["label_seconds"], \
driver_cpu_seconds_whole_job=round(time.process_time() - c0, 2),
                      driver_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))))
'''


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkout", required=True, help="an older reslabel checkout (e.g. a git worktree)")
    p.add_argument("--images", type=int, default=30000)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--out")
    a = p.parse_args()
    sys.path.insert(0, str(HERE))
    import job_scale

    with tempfile.TemporaryDirectory(prefix="job-scale-baseline-") as tmp:
        tmp = pathlib.Path(tmp)
        job_scale.write_jpegs(tmp / "jpegs", a.images)
        job = job_scale._label_args(tmp / "jpegs", tmp / "out-old", tmp, argparse.Namespace(shard_size=a.shard_size))
        done = subprocess.run([sys.executable, "-c", CHILD.format(checkout=a.checkout, job_args=json.dumps(job))],
                              cwd=a.checkout, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the old checkout's job failed:\n{done.stderr[-4000:]}")
        old = json.loads(done.stdout.strip().splitlines()[-1])
        new_job = job_scale._label_args(tmp / "jpegs", tmp / "out-new", tmp,
                                        argparse.Namespace(shard_size=a.shard_size))
        new = job_scale.run_child("_label", ["--stage", "standin", "--job-args", json.dumps(new_job)])
    commit = subprocess.run(["git", "-C", a.checkout, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    record = dict(machine=job_scale.machine(), measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  images=a.images, shard_size=a.shard_size, old_commit=commit or a.checkout, old=old, new=new,
                  throughput_ratio=round(new["images_per_second"] / old["images_per_second"], 2))
    print(json.dumps(record, indent=1))
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
