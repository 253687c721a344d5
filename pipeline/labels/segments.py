"""A semantic label map → the ``segments`` list of a label row (one segment per class present).

Inputs follow ``pipeline.segmenter.SegmentationResult``: ``labels`` (H, W) int class index at the
original size, ``class_scores`` (C,) mean probability of class c over pixels labelled c (nan where
absent), ``pixel_counts`` (C,) pixels per class.
"""
from __future__ import annotations

from typing import Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.labels.rle import encode_mask, encode_masks, rles_bboxes


def _segment(c: int, name: str, rle: Dict, area: int, box: Sequence[float], score: float, hw: Tuple[int, int],
             instance_id: Optional[int]) -> dict:
    return {"category_id": int(c), "category_name": str(name), "rle": rle, "area": int(area),
            "bbox": [float(v) for v in box], "score": float(score),
            "pixel_fraction": float(area) / float(hw[0] * hw[1]), "instance_id": instance_id}


def segments_from_labels(labels: np.ndarray, class_names: Sequence[str], class_scores: Optional[np.ndarray] = None,
                         exclude: Collection[int] = ()) -> List[dict]:
    """One segment dict (schema ``SEGMENT_TYPE``) per class present in ``labels``, sorted by class id.

    Args:
        labels: (H, W) integer class indices into ``class_names``.
        class_names: C names; ``category_id`` is the index, ``category_name`` the name.
        class_scores: (C,) mean probability inside each class's pixels; nan/None → computed as nan→0.
        exclude: class ids never emitted (e.g. the background class).
    """
    h, w = labels.shape
    counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=len(class_names))
    ids = [c for c in np.flatnonzero(counts) if c not in set(exclude)]
    if not ids:
        return []
    masks = np.stack([labels == c for c in ids], axis=2)  # (H, W, N) bool
    rles = encode_masks(masks)
    boxes = rles_bboxes(rles)  # (N, 4) XYWH
    scores = [float(class_scores[c]) if class_scores is not None else float("nan") for c in ids]
    return [_segment(c, class_names[c], rles[k], counts[c], boxes[k], 0.0 if np.isnan(s) else s, (h, w), None)
            for k, (c, s) in enumerate(zip(ids, scores))]


def row_segments(labels: np.ndarray, class_names: Sequence[str], class_scores: Optional[np.ndarray] = None,
                 exclude: Collection[int] = (), *, label_probs: Optional[np.ndarray] = None,
                 confidence: Optional[np.ndarray] = None, instances: bool = False, min_instance_area: int = 0,
                 ignore_below: Optional[float] = None) -> Tuple[List[dict], Optional[dict]]:
    """The ``segments`` and ``ignore`` of one label row.

    Without ``instances`` and ``ignore_below`` this is ``segments_from_labels`` (one segment per class) and
    ``ignore`` is None. ``ignore_below=P`` takes the pixels whose winning class probability (``confidence``,
    (H, W)) is below P out of every segment and returns them as one RLE (the usual pseudo-label practice:
    train with them as ``ignore_index``); segment areas and scores then count only the pixels kept.
    ``instances`` splits each class's mask into 8-connected components, one segment each, with
    ``instance_id`` 1..K in (class, raster order of the component's first pixel); components smaller than
    ``min_instance_area`` pixels are dropped (their pixels belong to no segment). Scores are the mean of
    ``label_probs`` ((H, W), the probability of each pixel's class) inside the segment.
    """
    if not instances and ignore_below is None:
        return segments_from_labels(labels, class_names, class_scores, exclude), None
    if label_probs is None or (ignore_below is not None and confidence is None):
        raise ValueError("instances/ignore_below need the per-pixel probabilities "
                         "(segment(..., return_confidence=True))")
    hw = labels.shape
    ignore = confidence < ignore_below if ignore_below is not None else np.zeros(hw, dtype=bool)
    ignore_rle = encode_mask(ignore) if ignore_below is not None else None
    num = len(class_names)
    kept = np.where(ignore, num, labels).astype(np.int64)  # class `num` = ignored
    counts = np.bincount(kept.ravel(), minlength=num + 1)[:num]
    sums = np.bincount(kept.ravel(), weights=label_probs.ravel().astype(np.float64), minlength=num + 1)[:num]
    ids = [int(c) for c in np.flatnonzero(counts) if c not in set(exclude)]
    if not instances:
        masks = np.stack([kept == c for c in ids], axis=2) if ids else np.zeros(hw + (0,), bool)
        rles = encode_masks(masks) if ids else []
        boxes = rles_bboxes(rles)
        return [_segment(c, class_names[c], rles[k], counts[c], boxes[k], sums[c] / counts[c], hw, None)
                for k, c in enumerate(ids)], ignore_rle
    import cv2

    found = []  # (class, component map, component label, area, score)
    for c in ids:
        n, components = cv2.connectedComponents((kept == c).astype(np.uint8), connectivity=8)
        flat = components.ravel()
        areas = np.bincount(flat, minlength=n)
        scores = np.bincount(flat, weights=label_probs.ravel().astype(np.float64), minlength=n)
        labels_seen, first = np.unique(flat, return_index=True)  # first pixel of each component, raster order
        order = [int(k) for _, k in sorted(zip(first, labels_seen)) if k != 0]
        found += [(c, components, k, int(areas[k]), scores[k] / areas[k]) for k in order
                  if areas[k] >= max(min_instance_area, 1)]
    if not found:
        return [], ignore_rle
    masks = np.zeros(hw + (len(found),), dtype=np.uint8, order="F")  # (H, W, K): each mask one contiguous slice
    for j, (_, components, k, _, _) in enumerate(found):
        np.equal(components, k, out=masks[:, :, j], casting="unsafe")
    rles = encode_masks(masks)
    boxes = rles_bboxes(rles)
    return [_segment(c, class_names[c], rles[j], area, boxes[j], score, hw, j + 1)
            for j, (c, _, _, area, score) in enumerate(found)], ignore_rle


# Benchmarks whose class 0 is a background class (ResCLIP's class files list its synonyms on line 1).
BACKGROUND_VOCABULARIES = ("voc21", "context60", "coco_object")


def background_ids(vocabulary: str, class_names: Sequence[str], policy: str = "auto") -> List[int]:
    """Class ids to leave out of ``segments``.

    ``policy``: ``"none"`` keeps every class; ``"auto"`` drops class 0 of the benchmark vocabularies with
    a background line, or any class literally named "background"; any other value is a class name to drop.
    """
    if policy == "none":
        return []
    if policy == "auto":
        ids = {i for i, n in enumerate(class_names) if n.strip().lower() == "background"}
        if vocabulary in BACKGROUND_VOCABULARIES:
            ids.add(0)
        return sorted(ids)
    if policy not in class_names:
        raise ValueError(f"background class {policy!r} is not in the vocabulary ({len(class_names)} classes)")
    return [list(class_names).index(policy)]


def image_confidence(class_scores: np.ndarray, pixel_counts: np.ndarray) -> Optional[float]:
    """An image's confidence (the row's ``confidence``, schema 2.2): the mean over all its pixels of the
    probability of the class each pixel got, = sum_c score_c * pixels_c / sum_c pixels_c from the segmenter's
    (C,) ``class_scores`` (mean probability over the pixels labelled c; NaN where absent) and (C,)
    ``pixel_counts``. Defined for every image, an all-background one included; None for an empty image."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    scores = np.nan_to_num(np.asarray(class_scores, dtype=np.float64), nan=0.0)
    return float(np.clip((scores * counts).sum() / total, 0.0, 1.0))
