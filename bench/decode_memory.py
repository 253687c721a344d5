"""Measurement behind the read+decode tasks' memory reservation (``jobs.runner.decode_memory``).

    .venv/bin/python bench/decode_memory.py --out bench/results/decode_memory.json

Each case runs ``jobs.stages.read_decode`` (the job's real read+decode stage, voc21 preset) once in a fresh
Ray worker (a local Ray, ``max_calls=1``) on JPEGs of the given sizes written to a temp folder, and samples the
worker's USS (the memory Ray Data's high-memory check compares with the reservation) every 20 ms. Reports
the USS after imports, the peak USS, peak RSS, and the reservation the job makes for the case's largest
image; Ray Data warns when 1.25 × peak USS exceeds the reservation, so ``covered`` must be true for every
image within ``--max-pixels``.
"""
from __future__ import annotations

import argparse
import io
import json
import pathlib
import platform
import sys
import tempfile
import time
from typing import Dict, List

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {  # name -> (count, width, height)
    "16 x 640x480": (16, 640, 480),
    "16 x 1920x1080": (16, 1920, 1080),
    "1 x 12 Mpx": (1, 4000, 3000),
    "1 x 24 Mpx": (1, 6000, 4000),
    "1 x 64 Mpx (the default --max-pixels)": (1, 8000, 8000),
}


def _jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth random colour fields (compresses like a photo, not like noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _measure(paths: List[str], seg_config, max_pixels: int) -> Dict:
    """In a Ray worker: read+decode ``paths`` as the job does; USS before and at its peak (MiB)."""
    import resource
    import threading

    import psutil
    import pyarrow as pa

    from jobs.inputs import INDEX_SCHEMA
    from jobs.stages import read_decode

    proc = psutil.Process()
    base = proc.memory_full_info().uss
    peak = [base]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_full_info().uss)
            time.sleep(0.02)
    rows = [dict(image_id=str(i), source_uri=p, path=p, offset=-1, length=-1, row_group=-1, row=-1, pre_status=None,
                 pre_error=None, _shard=0) for i, p in enumerate(paths)]
    batch = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA.append(pa.field("_shard", pa.int32())))
    sampler = threading.Thread(target=poll)
    sampler.start()
    out = read_decode(batch, seg_config=seg_config, bytes_column="jpg", max_pixels=max_pixels)
    stop.set()
    sampler.join()
    return dict(uss_after_imports_mib=round(base / 2**20, 1), peak_uss_mib=round(peak[0] / 2**20, 1),
                peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                torch_imported="torch" in sys.modules, statuses=sorted(set(out.column("status").to_pylist())))


def main() -> None:
    import ray

    from jobs.runner import decode_memory
    from pipeline.io.decode import DEFAULT_MAX_PIXELS
    from pipeline.method.presets import get_preset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    measure = ray.remote(num_cpus=1, max_calls=1)(_measure)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (count, w, h) in CASES.items():
            paths = []
            for i in range(count):
                p = pathlib.Path(tmp) / f"{w}x{h}-{i}.jpg"
                p.write_bytes(_jpeg(w, h, i))
                paths.append(str(p))
            r = ray.get(measure.remote(paths, get_preset("voc21"), DEFAULT_MAX_PIXELS))
            reserved = decode_memory(w * h)
            r.update(case=name, pixels=w * h, reserved_mib=round(reserved / 2**20, 1),
                     covered=1.25 * r["peak_uss_mib"] * 2**20 <= reserved)
            results.append(r)
            print(json.dumps(r), flush=True)
    ray.shutdown()
    big = [r for r in results if r["pixels"] >= 12_000_000]
    per_pixel = [(r["peak_uss_mib"] - r["uss_after_imports_mib"]) * 2**20 / r["pixels"] for r in big]
    record = dict(machine=dict(platform=platform.platform(), python=platform.python_version()),
                  measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cases=results,
                  bytes_per_decoded_pixel=[round(x, 1) for x in per_pixel],
                  default_reservation_mib=round(decode_memory(DEFAULT_MAX_PIXELS) / 2**20, 1))
    print(json.dumps({k: v for k, v in record.items() if k != "cases"}, indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
