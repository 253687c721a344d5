"""Seconds per epoch of the two training readers on a small run: ``read_labels`` lazily (every epoch re-reads and
decodes) vs ``.materialize()``d (decoded once), and ``LabeledImageDataset`` through a DataLoader.

    python bench/read_epochs.py [--images 16] [--epochs 3] [--out bench/results/read_epochs.json]

Writes JSON (seconds per epoch, the machine and its CPU flags); compare numbers from one run only.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> dict:
    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1]
    except (OSError, StopIteration):
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    import datetime

    return dict(platform=platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
                load_average=os.getloadavg(), cpu_flags=[f for f in wanted if f in flags.split()],
                measured_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "read_epochs.json"))
    args = p.parse_args()
    import ray
    from torch.utils.data import DataLoader

    from jobs.read import read_labels
    from pipeline.labels.dataset import LabeledImageDataset
    from tests.consumer_fixtures import synthetic_run

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="read-epochs-"))
    run_dir, _, _ = synthetic_run(tmp, n_ok=args.images, n_failed=0, hw=(240, 320))
    ray.init(address="local", num_cpus=2, include_dashboard=False)

    def epochs(iterate) -> list:
        out = []
        for _ in range(args.epochs):
            t = time.perf_counter()
            n = iterate()
            out.append(round(time.perf_counter() - t, 4))
            assert n == args.images, n
        return out

    dset = LabeledImageDataset(run_dir, size=(224, 224))
    lazy = read_labels(run_dir, size=(224, 224), with_images=True)
    t = time.perf_counter()
    cached = read_labels(run_dir, size=(224, 224), with_images=True).materialize()
    materialize_s = round(time.perf_counter() - t, 4)
    result = dict(
        images=args.images, image_size=[240, 320], size=[224, 224],
        read_labels_lazy_s=epochs(lambda: sum(len(b["image_id"]) for b in lazy.iter_torch_batches(batch_size=4))),
        read_labels_materialize_s=materialize_s,
        read_labels_materialized_s=epochs(
            lambda: sum(len(b["image_id"]) for b in cached.iter_torch_batches(batch_size=4))),
        torch_dataset_s=epochs(lambda: sum(len(lab) for _, lab in DataLoader(dset, batch_size=4))),
        machine=machine())
    ray.shutdown()
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
