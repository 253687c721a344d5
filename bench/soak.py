"""Crash soak: many seeded driver kills (SIGKILL of ``python -m jobs.label`` at random moments, then the
same ``--run-id`` resumed) on the tiny test model; reports rows lost / duplicated per trial (must be 0).

    .venv/bin/python bench/soak.py --trials 30 --images 16 --seed 1 [--kills-per-trial 2] [--workdir DIR]

Each trial: fresh input folder and output, ``--kills-per-trial`` kills (each, by a seeded coin: at a
uniform random time in [--min-s, --max-s] seconds after launch, or 0-3 s after that launch commits a
part file), then a resume that must exit 0 and commit every input exactly once. CI runs the short
version (``tests/test_reliability_crashes.py``).
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import random
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _model_files(d: pathlib.Path) -> list:
    import torch

    from tests.conftest import TINY_ARCH, make_openclip_model

    torch.save(make_openclip_model(TINY_ARCH).state_dict(), d / "tiny.pt")
    (d / "vocab.txt").write_text("sky, wall, tree\ncat\ndog, puppy\nperson\n")
    (d / "templates.txt").write_text("a photo of a {}.\na bad photo of the {}.\n")
    return ["--preset", "voc21", "--model", TINY_ARCH, "--weights", str(d / "tiny.pt"), "--vocabulary",
            str(d / "vocab.txt"), "--templates", str(d / "templates.txt"), "--images-per-call", "2",
            "--read-threads", "4"]


def trial(i: int, rng: random.Random, work: pathlib.Path, model_args: list, a) -> dict:
    from tests.crash_helpers import committed_names, finish, kill_driver_at, launch, write_images

    d = work / f"trial-{i:03d}"
    names = write_images(d / "in", a.images, seed=i)
    args = ["--input", str(d / "in"), "--output", str(d / "out"), "--shard-size", str(a.shard_size),
            "--run-id", f"soak-{i}", *model_args]
    t0, kills, times = time.time(), 0, []

    def parts():
        return len(list((d / "out").glob(f"runs/soak-{i}/part-*.parquet")))

    for k in range(a.kills_per_trial):
        if rng.random() < 0.5:  # a random moment after launch
            at, when, tag = rng.uniform(a.min_s, a.max_s), None, "t"
        else:  # a random moment (0-3 s) after this launch commits a part
            at, when, tag = rng.uniform(0.0, 3.0), (lambda n=parts(): parts() > n), "part+"
        if kill_driver_at(launch(args, d / "job.log"), at, when=when):
            kills += 1
            times.append(f"{tag}{at:.1f}s")
    rc = finish(launch(args, d / "job.log"))
    got = committed_names(str(d / "out")) if rc == 0 else collections.Counter()
    want = collections.Counter(names)
    return dict(trial=i, kills=kills, kill_times_s=times, resume_rc=rc, rows=sum(got.values()),
                lost=sum((want - got).values()), duplicated=sum(v - 1 for v in got.values() if v > 1),
                extra=sum((got - want).values()), seconds=round(time.time() - t0, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--kills-per-trial", type=int, default=1)
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--shard-size", type=int, default=2)
    p.add_argument("--min-s", type=float, default=3.0, help="earliest kill, seconds after launch")
    p.add_argument("--max-s", type=float, default=20.0, help="latest kill, seconds after launch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep trial folders here (default: a temp dir, removed)")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_args = _model_files(work)
        results = []
        for i in range(a.trials):
            r = trial(i, rng, work, model_args, a)
            results.append(r)
            print(json.dumps(r), flush=True)
    total = {k: sum(r[k] for r in results) for k in ("kills", "rows", "lost", "duplicated", "extra")}
    failed = [r["trial"] for r in results if r["resume_rc"] != 0 or r["lost"] or r["duplicated"] or r["extra"]]
    print(json.dumps({"trials": len(results), **total, "failed_trials": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
