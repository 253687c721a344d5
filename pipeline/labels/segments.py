"""A semantic label map → the ``segments`` list of a label row (one segment per class present).

Inputs follow ``pipeline.segmenter.SegmentationResult``: ``labels`` (H, W) int class index at the
original size, ``class_scores`` (C,) mean probability of class c over pixels labelled c (nan where
absent), ``pixel_counts`` (C,) pixels per class.
"""
from __future__ import annotations

from typing import Collection, List, Optional, Sequence

import numpy as np

from pipeline.labels.rle import encode_masks, rles_bboxes


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
    out = []
    for k, c in enumerate(ids):
        score = float(class_scores[c]) if class_scores is not None else float("nan")
        out.append({
            "category_id": int(c),
            "category_name": str(class_names[c]),
            "rle": rles[k],
            "area": int(counts[c]),
            "bbox": [float(v) for v in boxes[k]],
            "score": 0.0 if np.isnan(score) else score,
            "pixel_fraction": float(counts[c]) / float(h * w),
        })
    return out


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
