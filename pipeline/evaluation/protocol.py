"""Benchmark evaluation with the paper protocol: a segmenter (or a stored run) against mmseg-layout GT.

Predictions are label maps at the original image size (the segmenter resizes its logits back, as the
official code does), compared with the GT PNG of the same image; IoU is accumulated over the dataset
(``pipeline.evaluation.metrics``). Nothing here imports Ray.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from pipeline.evaluation.benchmarks import Benchmark, list_pairs, load_gt
from pipeline.evaluation.metrics import IoUAccumulator, markdown_table
from pipeline.io import uri as uris
from pipeline.labels.dataset import load_rgb
from pipeline.labels.reader import Run, label_map

# ResCLIP (NACLIP base, ViT-B/16) mIoU % from the paper, docs/method.md §4.1 — printed next to our numbers.
PAPER_MIOU_VITB16 = {"voc21": 61.1, "context60": 33.5, "coco_object": 35.0, "voc20": 86.0, "cityscapes": 35.9,
                     "context59": 36.8, "ade20k": 18.0, "coco_stuff": 24.7}

Predictor = Callable[[str, str], np.ndarray]  # (stem, image path) → (H, W) class indices


def segmenter_predictor(seg) -> Predictor:
    """Predict with an in-process ``pipeline.segmenter.Segmenter`` (one image per call)."""

    def predict(stem: str, image_path: str) -> np.ndarray:
        return seg.segment([load_rgb(image_path)], names=[image_path])[0].labels

    return predict


def run_predictor(run: Run, bench: Benchmark, fill: Optional[int] = None) -> Tuple[Predictor, int]:
    """Predict by reading a stored run: the row whose source file name matches the GT stem.

    Rows are matched on ``basename(source_uri)`` minus the benchmark's image suffix. Pixels no
    segment covers get ``fill`` (default: ``run.background_fill()``, which restores a dropped
    background class; 255 otherwise, counted as misses). Returns the predictor and the fill used.
    """
    fill = run.background_fill() if fill is None else fill
    by_stem: Dict[str, dict] = {}
    for row in run.rows(status="ok"):
        name = row["source_uri"].rstrip("/").rsplit("/", 1)[-1]
        by_stem[name[: -len(bench.img_suffix)] if name.endswith(bench.img_suffix) else name] = row

    def predict(stem: str, image_path: str) -> np.ndarray:
        row = by_stem.get(stem.rsplit("/", 1)[-1])
        if row is None:
            raise KeyError(f"{image_path}: no ok row in run {run.uri} for this image")
        return label_map(row, fill)

    return predict, fill


def evaluate(bench: Benchmark, root: str, class_names: List[str], predict: Predictor,
             limit: Optional[int] = None, allow_unlabeled_pred: bool = False,
             log: Optional[Callable[[str], None]] = None) -> Dict:
    """Run ``predict`` over the benchmark's validation pairs and accumulate the confusion matrix.

    GT whose size differs from the prediction (= its image) or holding values outside the vocabulary
    raises ``LabelError`` naming the GT file. Returns ``IoUAccumulator.scores()`` plus run facts.
    """
    if len(class_names) != bench.num_classes:
        raise ValueError(f"{bench.name} has {bench.num_classes} classes but the vocabulary has {len(class_names)}; "
                         f"use the {bench.name} preset/vocabulary")
    pairs = list_pairs(bench, root, limit)
    if not pairs:
        raise FileNotFoundError(f"no images of {bench.name} found under {root}")
    acc = IoUAccumulator(class_names, allow_unlabeled_pred=allow_unlabeled_pred)
    for k, (stem, image_path, gt_path) in enumerate(pairs, start=1):
        pred = predict(stem, image_path)
        gt = load_gt(bench, gt_path, image_hw=pred.shape[:2])
        acc.update(pred, gt, name=gt_path)
        if log and (k % 50 == 0 or k == len(pairs)):
            log(f"{k}/{len(pairs)} images, running mIoU {acc.scores()['mIoU'] or 0:.2f}")
    scores = acc.scores()
    scores.update(benchmark=bench.name, reduce_zero_label=bench.reduce_zero_label, ignore_index=255,
                  protocol="mmseg IoUMetric: per-class intersection and union summed over the dataset; "
                           "classes absent from gt and prediction excluded from the mean; values in %",
                  paper_resclip_vitb16_mIoU=PAPER_MIOU_VITB16.get(bench.name))
    return scores


def write_report(scores: Dict, out_dir: str, extra: Optional[Dict] = None) -> Tuple[str, str]:
    """Write ``metrics.json`` (scores + ``extra`` such as configs) and ``metrics.md`` under ``out_dir``."""
    record = {**scores, **(extra or {}), "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    base = out_dir.rstrip("/")
    json_uri, md_uri = f"{base}/metrics.json", f"{base}/metrics.md"
    uris.write_bytes(json_uri, json.dumps(record, indent=1).encode("utf-8"))
    paper = scores.get("paper_resclip_vitb16_mIoU")
    note = f"Paper (ResCLIP, ViT-B/16): {paper} mIoU.\n" if paper is not None else ""
    table = markdown_table(scores, title=f"{scores.get('benchmark', '')} evaluation")
    uris.write_bytes(md_uri, (table + "\n" + note).encode("utf-8"))
    return json_uri, md_uri


def default_out_dir(benchmark: str) -> str:
    """``eval/<benchmark>-<UTC timestamp>`` in the working directory."""
    return os.path.join("eval", f"{benchmark}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}")
