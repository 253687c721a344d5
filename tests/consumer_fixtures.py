"""Builders for label runs and benchmark folders used by the consumer tests (reader/export/overlay/eval).

A run is written the way the job writes one: rows from ``schemas.make_row`` with segments from
``pipeline.labels.segments.segments_from_labels`` (real pycocotools RLE), Parquet parts, ``_SUCCESS.json`` last.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.labels.segments import image_confidence, row_segments, segments_from_labels
from schemas import make_row, rows_to_table

CLASSES = ["sky", "cat", "dog", "person"]
RUN_ID = "test-run"


def block_labels(h: int, w: int, seed: int, num_classes: int = len(CLASSES)) -> np.ndarray:
    """(H, W) int32 map of random rectangles of random classes (every pixel labelled)."""
    rng = np.random.default_rng(seed)
    lab = np.full((h, w), rng.integers(num_classes), dtype=np.int32)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        lab[y0: rng.integers(y0 + 1, h), x0: rng.integers(x0 + 1, w)] = rng.integers(num_classes)
    return lab


def label_row(image_id: str, source_uri: str, labels: Optional[np.ndarray], class_names: Sequence[str],
              status: str = "ok", exclude: Sequence[int] = (), seed: int = 0) -> dict:
    """One schema row; ``labels=None`` with a failure ``status`` gives a failed row."""
    prov = dict(method="resclip", base="naclip", preset="custom", model="tiny", weights_digest="0" * 16,
                vocabulary_hash="v" * 16, segmenter_hash="s" * 16, job_hash="c" * 16, code_version="test",
                run_id=RUN_ID, labeled_at=dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc))
    if labels is None:
        return make_row(image_id=image_id, source_uri=source_uri, width=None, height=None, status=status,
                        error="synthetic failure", **prov)
    scores = np.random.default_rng(seed).uniform(0.2, 1.0, len(class_names))
    segs = segments_from_labels(labels, list(class_names), scores, exclude=exclude)
    counts = np.bincount(np.asarray(labels).ravel(), minlength=len(class_names))[:len(class_names)]
    return make_row(image_id=image_id, source_uri=source_uri, width=labels.shape[1], height=labels.shape[0],
                    status="ok", segments=segs, confidence=image_confidence(scores, counts), **prov)


def write_run(run_dir: str, rows: List[dict], class_names: Sequence[str], committed: bool = True,
              parts: int = 2, metadata: Optional[Dict[str, str]] = None, manifest_categories: bool = True,
              manifest_extra: Optional[Dict] = None) -> str:
    """Write rows as ``part-*.parquet`` (split into ``parts``) and, if committed, ``_SUCCESS.json`` (listing
    the parts and, like ``jobs.commit``, the categories)."""
    os.makedirs(run_dir, exist_ok=True)
    meta = {"reslabel.categories": json.dumps(list(class_names)), "reslabel.run_id": RUN_ID}
    meta.update(metadata or {})
    chunks = [c for c in np.array_split(np.arange(len(rows)), parts) if len(c)]
    files = []
    for k, idx in enumerate(chunks):
        pq.write_table(rows_to_table([rows[i] for i in idx], meta), os.path.join(run_dir, f"part-{k:05d}.parquet"))
        files.append({"name": f"part-{k:05d}.parquet", "rows": len(idx)})
    if committed:
        manifest = {"run_id": RUN_ID, "rows": len(rows), "files": files}
        if manifest_categories:
            manifest["categories"] = [{"id": i, "name": n} for i, n in enumerate(class_names)]
        manifest.update(manifest_extra or {})
        with open(os.path.join(run_dir, "_SUCCESS.json"), "w") as f:
            json.dump(manifest, f)
    return run_dir


def save_png(path: str, array: np.ndarray, palette: bool = False) -> str:
    """Save an RGB (H, W, 3) or label (H, W) uint8 array as PNG (label maps optionally as palette PNG)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.ascontiguousarray(array.astype(np.uint8))
    if palette and a.ndim == 2:  # like VOC's SegmentationClass: palette PNG, index = class
        im = Image.frombytes("P", (a.shape[1], a.shape[0]), a.tobytes())
        im.putpalette([(i * 37) % 256 for i in range(768)])
    else:
        im = Image.fromarray(a)
    im.save(path, format="PNG")  # PNG bytes whatever the suffix: lossless
    return path


def synthetic_run(tmp_path, n_ok: int = 5, n_failed: int = 2, hw=(37, 53), exclude=()) -> tuple:
    """A committed run of ``n_ok`` labelled images (files written as PNG) plus failed rows.

    Returns ``(run_dir, {image_id: labels}, {image_id: image})``.
    """
    labels, images, rows = {}, {}, []
    rng = np.random.default_rng(0)
    for i in range(n_ok):
        h, w = hw[0] + 3 * i, hw[1] - 2 * i
        image_id = f"img{i:03d}"
        lab = block_labels(h, w, seed=i)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        src = save_png(str(tmp_path / "images" / f"{image_id}.png"), img)
        rows.append(label_row(image_id, src, lab, CLASSES, exclude=exclude, seed=i))
        labels[image_id] = np.where(np.isin(lab, list(exclude)), 255, lab) if exclude else lab
        images[image_id] = img
    for j in range(n_failed):
        rows.append(label_row(f"bad{j}", str(tmp_path / "images" / f"bad{j}.jpg"), None, CLASSES, "decode_error"))
    return write_run(str(tmp_path / "runs" / RUN_ID), rows, CLASSES), labels, images


def review_run(tmp_path) -> tuple:
    """A committed random-weights run labelled with --ignore-below 0.4: 5 images with ignore regions (real
    ``row_segments``), one all-background image (class 0 excluded: no segment, yet a confidence), one failure."""
    rng = np.random.default_rng(3)
    rows, sources = [], {}
    prov = dict(method="resclip", base="naclip", preset="custom", model="tiny", weights_digest="random:tiny:seed0",
                vocabulary_hash="v" * 16, segmenter_hash="s" * 16, job_hash="j" * 16, code_version="test",
                run_id=RUN_ID, labeled_at=dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))
    for i in range(6):
        h, w = 40 + 4 * i, 56 - 2 * i
        labels = block_labels(h, w, seed=i) if i < 5 else np.zeros((h, w), np.int32)  # the last: all background
        conf = rng.uniform(0.2, 1.0, (h, w)).astype(np.float32)
        scores = np.array([conf[labels == c].mean() if (labels == c).any() else np.nan for c in range(len(CLASSES))])
        segs, ignore = row_segments(labels, CLASSES, scores, exclude=[0], label_probs=conf, confidence=conf,
                                    ignore_below=0.4)
        name = f"street scene {i}.png" if i < 5 else "empty-wall.png"
        src = save_png(str(tmp_path / "photos" / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        image_id = f"{i:02d}" + "ab" * 11
        sources[image_id] = name
        counts = np.bincount(labels.ravel(), minlength=len(CLASSES))
        rows.append(make_row(image_id=image_id, source_uri=src, width=w, height=h, status="ok", segments=segs,
                             ignore=ignore, confidence=image_confidence(scores, counts), **prov))
    rows.append(make_row(image_id="f" * 24, source_uri=str(tmp_path / "photos" / "broken.jpg"), width=None,
                         height=None, status="decode_error", error="not an image", **prov))
    extra = {"provenance": {"weights_digest": "random:tiny:seed0"}, "excluded_category_ids": [0],
             "config": {"job": {"preset": "voc21", "background": "auto", "instances": False, "ignore_below": 0.4},
                        "segmenter": {"prob_thd": 0.1}}}
    return write_run(str(tmp_path / "runs" / RUN_ID), rows, CLASSES, manifest_extra=extra), sources


def make_benchmark(root: str, bench, gts: Dict[str, np.ndarray], seed: int = 0, split: bool = True) -> Dict[str, str]:
    """Write images and GT label PNGs (values as stored on disk) in ``bench``'s mmseg layout under ``root``.

    Images are random RGB (PNG bytes even for a ``.jpg`` suffix: lossless, and decoders go by content).
    Returns stem → image path.
    """
    rng = np.random.default_rng(seed)
    paths = {}
    for stem, gt in gts.items():
        img = rng.integers(0, 256, gt.shape + (3,), dtype=np.uint8)
        paths[stem] = save_png(os.path.join(root, bench.img_dir, stem + bench.img_suffix), img)
        save_png(os.path.join(root, bench.ann_dir, stem + bench.seg_suffix), gt, palette=True)
    if split and bench.split:
        os.makedirs(os.path.dirname(os.path.join(root, bench.split)), exist_ok=True)
        with open(os.path.join(root, bench.split), "w") as f:
            f.write("\n".join(sorted(gts)) + "\n")
    return paths
