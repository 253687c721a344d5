"""From averaged logits to labels (docs/method.md §1.7): resize, softmax × scale, synonym max-pooling,
SCLIP's area threshold, argmax, ``prob_thd`` → background.

Large outputs are processed in bands of rows so memory stays bounded by ``max_elements``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclasses.dataclass
class SegmentationResult:
    """Labels of one image at its original size.

    labels: (H, W) int32 class index (0 also receives pixels below ``prob_thd``).
    class_scores: (C,) float32, mean probability of class c over the pixels labelled c; NaN where absent.
    pixel_counts: (C,) int64, pixels labelled c.
    probs: (C, H, W) float32 class probabilities when requested, else None.
    confidence: (H, W) float32 probability of the winning class (before ``prob_thd`` sends a pixel to class 0)
        when requested, else None: what ``--ignore-below`` thresholds.
    label_probs: (H, W) float32 probability of the class each pixel got (what ``class_scores`` average), with
        ``confidence``.
    """

    labels: np.ndarray
    class_scores: np.ndarray
    pixel_counts: np.ndarray
    probs: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None
    label_probs: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class PostParams:
    logit_scale: float
    prob_thd: float
    area_thd: Optional[float]
    query_to_class: Tuple[int, ...]
    num_classes: int


def resize_rows(logits: torch.Tensor, size: Tuple[int, int], rows: slice) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (Q, h, w) to ``size``, output rows ``rows`` only."""
    q, h, w = logits.shape
    out_h, out_w = size
    if rows.start == 0 and rows.stop >= out_h:
        return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    y = (torch.arange(rows.start, rows.stop, dtype=torch.float64) + 0.5) * (h / out_h) - 0.5
    y = y.clamp(min=0)
    y0 = y.floor().long().clamp(max=h - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    ly = (y - y0).float().view(1, -1, 1)
    band = logits[:, y0] * (1 - ly) + logits[:, y1] * ly  # (Q, r, w), vertical lerp
    return F.interpolate(band[None], size=(band.shape[1], out_w), mode="bilinear", align_corners=False)[0]


def pool_classes(probs: torch.Tensor, p: PostParams) -> torch.Tensor:
    """Query probabilities (Q, ...) → class probabilities (C, ...): max over each class's synonyms."""
    if len(p.query_to_class) == p.num_classes:
        return probs
    idx = torch.tensor(p.query_to_class).view(-1, *([1] * (probs.ndim - 1))).expand_as(probs)
    out = torch.zeros((p.num_classes,) + tuple(probs.shape[1:]), dtype=probs.dtype)
    return out.scatter_reduce_(0, idx, probs, "amax", include_self=False)


def _band_probs(logits: torch.Tensor, size: Tuple[int, int], rows: slice, p: PostParams) -> torch.Tensor:
    resized = resize_rows(logits, size, rows) if tuple(logits.shape[-2:]) != tuple(size) else logits[:, rows]
    return pool_classes(torch.softmax(resized * p.logit_scale, dim=0), p)  # (C, r, W)


def _bands(height: int, per_row: int, max_elements: int) -> Sequence[slice]:
    step = max(1, max_elements // max(per_row, 1))
    return [slice(r, min(r + step, height)) for r in range(0, height, step)]


def postprocess(logits: torch.Tensor, size: Tuple[int, int], p: PostParams, return_probs: bool = False,
                max_elements: int = 1 << 25, return_confidence: bool = False) -> SegmentationResult:
    """Averaged logits (Q, h, w) → labels at ``size`` = (H, W) original pixels (and, on request, the class
    probabilities and the per-pixel confidence; see ``SegmentationResult``)."""
    logits = logits.float().cpu()
    height, width = size
    bands = _bands(height, max(len(p.query_to_class), p.num_classes) * width, max_elements)
    keep = torch.ones(p.num_classes)
    if p.area_thd is not None:  # SCLIP: drop classes whose argmax area is too small (never class 0)
        counts = torch.zeros(p.num_classes)
        for rows in bands:
            counts += torch.bincount(_band_probs(logits, size, rows, p).argmax(0).flatten(), minlength=p.num_classes)
        fg = counts[1:]
        keep[1:] = (fg > p.area_thd * fg.sum()).float()
    labels = np.empty((height, width), dtype=np.int32)
    sums = torch.zeros(p.num_classes, dtype=torch.float64)
    counts = torch.zeros(p.num_classes, dtype=torch.int64)
    probs_out = np.empty((p.num_classes, height, width), dtype=np.float32) if return_probs else None
    confidence = np.empty((height, width), dtype=np.float32) if return_confidence else None
    label_probs = np.empty((height, width), dtype=np.float32) if return_confidence else None
    for rows in bands:
        probs = _band_probs(logits, size, rows, p) * keep.view(-1, 1, 1)  # (C, r, W)
        maxp, pred = probs.max(dim=0)
        if confidence is not None:
            confidence[rows] = maxp.numpy()
        pred[maxp < p.prob_thd] = 0
        at = probs.gather(0, pred[None])[0]  # probability of the assigned class
        if label_probs is not None:
            label_probs[rows] = at.numpy()
        sums += torch.bincount(pred.flatten(), weights=at.flatten().double(), minlength=p.num_classes)
        counts += torch.bincount(pred.flatten(), minlength=p.num_classes)
        labels[rows] = pred.numpy()
        if probs_out is not None:
            probs_out[:, rows] = probs.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (sums / counts).float().numpy()
    return SegmentationResult(labels, scores.astype(np.float32), counts.numpy(), probs_out, confidence, label_probs)
