"""Semantic-segmentation metrics with the paper protocol (mmseg ``IoUMetric``, docs/method.md §1.7).

IoU is accumulated over the whole dataset: per class, intersections and unions are summed over all
images and divided once at the end (not averaged per image). Ground-truth pixels equal to
``ignore_index`` (255) are excluded. Classes that never occur in the ground truth *nor* the
prediction have an undefined IoU (NaN) and are left out of the mean, as mmseg's ``nanmean`` does.
All reported numbers are percentages (0–100), like the paper tables.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

IGNORE_INDEX = 255


class LabelError(ValueError):
    """A label map holds values outside the vocabulary, or its size does not match."""


def reduce_zero_label(gt: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 (background/unlabelled) → ignore, every other label − 1.

    Args:
        gt: (H, W) integer label map as stored on disk (e.g. ADE20K: 0 = other, 1..150 = classes).
    Returns:
        (H, W) uint8 map where the old 0 and the old ``ignore_index`` are ``ignore_index``.
    """
    g = gt.astype(np.int64)
    out = g - 1
    out[(g == 0) | (g == ignore_index)] = ignore_index
    return out.astype(np.uint8)


def check_labels(labels: np.ndarray, num_classes: int, name: str, ignore_index: Optional[int] = IGNORE_INDEX) -> None:
    """Raise ``LabelError`` naming ``name`` if a value is neither a class index nor ``ignore_index``."""
    values = np.unique(labels)
    bad = values[(values < 0) | (values >= num_classes)]
    if ignore_index is not None:
        bad = bad[bad != ignore_index]
    if bad.size:
        raise LabelError(
            f"{name}: label values {bad[:10].tolist()} are outside the vocabulary "
            f"(0..{num_classes - 1}" + (f", ignore {ignore_index})" if ignore_index is not None else ")")
        )


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX, name: str = "image"
) -> np.ndarray:
    """One image's confusion matrix.

    Args:
        pred: (H, W) predicted class indices in ``[0, num_classes)``.
        gt: (H, W) ground truth, class indices or ``ignore_index``.
    Returns:
        (C, C) int64, rows = ground-truth class, columns = predicted class, pixel counts.
    """
    if pred.shape != gt.shape:
        raise LabelError(f"{name}: prediction shape {pred.shape} differs from ground truth {gt.shape}")
    check_labels(gt, num_classes, f"{name} (ground truth)", ignore_index)
    check_labels(pred, num_classes, f"{name} (prediction)", None)
    keep = gt != ignore_index
    idx = gt[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray, class_names: Sequence[str], missed: Optional[np.ndarray] = None) -> Dict:
    """mIoU, per-class IoU / accuracy, pixel accuracy (aAcc) and mAcc from a summed confusion matrix.

    Args:
        cm: (C, C) int64 dataset-summed confusion matrix (rows gt, columns prediction).
        missed: (C,) gt pixels per class that got no prediction at all (count as errors), or None.
    Returns:
        JSON-ready dict; percentages; NaN classes (no gt and no prediction) are ``None`` per class
        and skipped in the means.
    """
    cm = cm.astype(np.float64)
    inter = np.diag(cm)
    area_gt = cm.sum(axis=1) + (0 if missed is None else missed)
    area_pred = cm.sum(axis=0)
    union = area_gt + area_pred - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
        acc = inter / area_gt
    total = area_gt.sum()
    return {
        "mIoU": _pct(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "mAcc": _pct(np.nanmean(acc)) if np.isfinite(acc).any() else None,
        "aAcc": _pct(inter.sum() / total) if total else None,
        "num_pixels": int(total),
        "per_class": [
            {"index": i, "name": n, "IoU": _pct(iou[i]), "Acc": _pct(acc[i]), "gt_pixels": int(area_gt[i])}
            for i, n in enumerate(class_names)
        ],
    }


def _pct(x: float) -> Optional[float]:
    return None if x is None or not math.isfinite(float(x)) else float(x) * 100.0


class IoUAccumulator:
    """Accumulates confusion matrices over a dataset; ``scores()`` gives the dataset-level metrics.

    With ``allow_unlabeled_pred`` a prediction may hold ``ignore_index`` (no label there, e.g. a stored
    run whose background segments were dropped): such pixels count as wrong for their gt class.
    """

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX,
                 allow_unlabeled_pred: bool = False) -> None:
        self.class_names: List[str] = list(class_names)
        self.ignore_index = ignore_index
        self.allow_unlabeled_pred = allow_unlabeled_pred
        c = len(self.class_names)
        self.cm = np.zeros((c, c), dtype=np.int64)
        self.missed = np.zeros(c, dtype=np.int64)
        self.num_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, name: str = "image") -> None:
        """Add one image: ``pred`` and ``gt`` are (H, W) maps at the same (original) size."""
        c = len(self.class_names)
        if self.allow_unlabeled_pred and pred.shape == gt.shape:
            unlabeled = pred == self.ignore_index
            if unlabeled.any():
                check_labels(gt, c, f"{name} (ground truth)", self.ignore_index)
                lost = gt[unlabeled & (gt != self.ignore_index)].astype(np.int64)
                self.missed += np.bincount(lost, minlength=c)[:c]
                gt = np.where(unlabeled, self.ignore_index, gt)
                pred = np.where(unlabeled, 0, pred)
        self.cm += confusion_matrix(pred, gt, c, self.ignore_index, name)
        self.num_images += 1

    def scores(self) -> Dict:
        out = scores_from_confusion(self.cm, self.class_names, self.missed)
        out["num_images"] = self.num_images
        return out


def markdown_table(scores: Dict, title: str = "") -> str:
    """A markdown report: the headline row (mIoU, mAcc, aAcc) then per-class IoU / Acc, in %."""

    def fmt(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines = [f"## {title}", ""] if title else []
    lines += [
        "| images | pixels | mIoU | mAcc | aAcc |",
        "|---:|---:|---:|---:|---:|",
        f"| {scores.get('num_images', '')} | {scores['num_pixels']} | {fmt(scores['mIoU'])} | "
        f"{fmt(scores['mAcc'])} | {fmt(scores['aAcc'])} |",
        "",
        "| # | class | IoU | Acc | gt pixels |",
        "|---:|---|---:|---:|---:|",
    ]
    for c in scores["per_class"]:
        lines.append(f"| {c['index']} | {c['name']} | {fmt(c['IoU'])} | {fmt(c['Acc'])} | {c['gt_pixels']} |")
    return "\n".join(lines) + "\n"
