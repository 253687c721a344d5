"""A semantic label map → the ``segments`` list of a label row (one segment per class present).

Inputs follow ``pipeline.segmenter.SegmentationResult``: ``labels`` (H, W) int class index at the
original size, ``class_scores`` (C,) mean probability of class c over pixels labelled c (nan where
absent), ``pixel_counts`` (C,) pixels per class.
"""
from __future__ import annotations

from typing import Collection, List, Optional, Sequence

import numpy as np

from pipeline.rle import encode_masks, rles_bboxes


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
