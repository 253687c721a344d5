"""Cost of ``--instances`` and ``--ignore-below`` per image, next to the segment stage.

For each bundled sample image (``pipeline/data/samples``): the segment stage (``Segmenter.segment``, random
ViT-B/16 weights, the voc20 preset: 336-pixel short side, whole image, no probability threshold — with
random weights voc21's threshold sends every pixel to the background) without and with the per-pixel
confidence these options need, then the row encoding (``pipeline.labels.segments.row_segments``: masks →
COCO RLE, boxes, scores) in each mode. ``--ignore-below`` is set per image at the median of its confidence,
so half of its pixels are ignored. Medians over ``--repeats`` rounds, modes timed round-robin. Random
weights label noisily, so the instance counts (written with the numbers) are far above a trained model's:
the instance cost here is an upper range. CPU flags recorded; do not compare across machines.

    .venv/bin/python bench/label_options.py --out bench/results/label_options.json
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

from pipeline import ModelConfig, Segmenter, get_preset
from pipeline.labels.segments import background_ids, row_segments

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench.machine import key_cpu_flags  # noqa: E402

SAMPLES = pathlib.Path(__file__).resolve().parent.parent / "pipeline" / "data" / "samples"
MODES = {"semantic": {}, "instances": {"instances": True}, "ignore-below": {"ignore_below": None},
         "instances + ignore-below": {"instances": True, "ignore_below": None}}  # None: the image's median


def _median(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.manual_seed(0)
    seg = Segmenter.build(get_preset("voc20"), ModelConfig(arch=a.arch, random_init=True))
    exclude = background_ids("voc20", seg.class_names)
    per_image = []
    for path in sorted(SAMPLES.glob("*.jpg")):
        image = np.asarray(Image.open(path).convert("RGB"))
        seg.segment([image])  # warm-up
        t_seg = _median(lambda: seg.segment([image]), a.repeats)
        t_seg_conf = _median(lambda: seg.segment([image], return_confidence=True), a.repeats)
        res = seg.segment([image], return_confidence=True)[0]
        encode = {}
        median = float(np.median(res.confidence))
        for name, opts in MODES.items():
            opts = {k: (median if k == "ignore_below" else v) for k, v in opts.items()}
            def run(opts=opts):
                return row_segments(res.labels, seg.class_names, res.class_scores, exclude,
                                    label_probs=res.label_probs, confidence=res.confidence, **opts)
            encode[name] = dict(ms=round(1000 * _median(run, a.repeats), 2), segments=len(run()[0]))
        per_image.append(dict(image=path.name, hw=list(image.shape[:2]), ignore_below=round(median, 4),
                              segment_ms=round(1000 * t_seg, 1),
                              segment_with_confidence_ms=round(1000 * t_seg_conf, 1), encode=encode))
        print(json.dumps(per_image[-1]), flush=True)
    summary = {name: round(statistics.median(p["encode"][name]["ms"] for p in per_image), 2) for name in MODES}
    report = dict(machine=dict(platform=platform.platform(), cpus=os.cpu_count(), threads=torch.get_num_threads(),
                               cpu_flags=key_cpu_flags(), torch=torch.__version__),
                  arch=a.arch, preset="voc20", repeats=a.repeats, per_image=per_image,
                  median_encode_ms=summary,
                  median_segment_ms=statistics.median(p["segment_ms"] for p in per_image),
                  median_segment_with_confidence_ms=statistics.median(p["segment_with_confidence_ms"]
                                                                      for p in per_image))
    print(json.dumps({k: report[k] for k in ("median_encode_ms", "median_segment_ms",
                                              "median_segment_with_confidence_ms")}))
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
