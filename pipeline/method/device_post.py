"""Post-processing on the model's device (the torch path: GPUs, and ``RESLABEL_PAMR_KERNEL=torch`` on CPU).

The same steps as :func:`pipeline.method.postprocess.postprocess` (docs/method.md §1.7: resize, softmax × scale,
synonym max, SCLIP's area threshold, argmax, ``prob_thd`` → class 0, class scores), written so that nothing reads
a value back to the host: no ``bincount`` (its output size depends on the data: a sync on CUDA), no ``.item()``,
no boolean indexing; counts and sums are ``index_add_`` into fixed-size tensors, constants are uploaded once per
device and cached. The result is a :class:`DeviceResult` of *compact* device tensors (labels in the smallest
integer type that holds the class ids, per-class counts and scores, the confidence maps only on request), which
:func:`to_host` copies back with one transfer per tensor (pinned, non-blocking on CUDA, one synchronisation per
call) and turns into a :class:`~pipeline.method.postprocess.SegmentationResult` (labels int32, as on the CPU path).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.method.postprocess import PostParams, SegmentationResult


def label_dtype(num_classes: int) -> torch.dtype:
    """The smallest integer dtype holding class ids 0..num_classes−1 (what crosses the bus per pixel)."""
    if num_classes <= 256:
        return torch.uint8
    if num_classes <= 1 << 15:
        return torch.int16
    return torch.int32


@dataclasses.dataclass
class DeviceResult:
    """Compact outputs of one image, still on the model's device.

    labels: (H, W) ``label_dtype(C)``; counts: (C,) int64 pixels per class; scores: (C,) float32 mean probability of
    the class over its pixels (NaN where absent); probs (C, H, W) / confidence, label_probs (H, W) float32 only
    when requested (see ``SegmentationResult``).
    """

    labels: torch.Tensor
    counts: torch.Tensor
    scores: torch.Tensor
    probs: Optional[torch.Tensor] = None
    confidence: Optional[torch.Tensor] = None
    label_probs: Optional[torch.Tensor] = None

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@functools.lru_cache(maxsize=16)
def _class_index(query_to_class: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(query_to_class, dtype=torch.int64).to(device)  # (Q,), uploaded once per device


def pool_classes_on(probs: torch.Tensor, p: PostParams) -> torch.Tensor:
    """Query probabilities (Q, ...) → class probabilities (C, ...): max over each class's synonyms, on device."""
    if len(p.query_to_class) == p.num_classes:
        return probs
    idx = _class_index(tuple(p.query_to_class), probs.device).view(-1, *([1] * (probs.ndim - 1))).expand_as(probs)
    out = torch.zeros((p.num_classes,) + tuple(probs.shape[1:]), dtype=probs.dtype, device=probs.device)
    return out.scatter_reduce_(0, idx, probs, "amax", include_self=False)


def _resize_rows_on(logits: torch.Tensor, size: Tuple[int, int], rows: slice) -> torch.Tensor:
    """As ``postprocess.resize_rows`` (bilinear, align_corners=False, output rows ``rows``), indices on device."""
    q, h, w = logits.shape
    out_h, out_w = size
    if rows.start == 0 and rows.stop >= out_h:
        return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    y = (torch.arange(rows.start, rows.stop, dtype=torch.float64, device=logits.device) + 0.5) * (h / out_h) - 0.5
    y = y.clamp(min=0)
    y0 = y.floor().long().clamp(max=h - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    ly = (y - y0).float().view(1, -1, 1)
    band = logits[:, y0] * (1 - ly) + logits[:, y1] * ly  # (Q, r, w), vertical lerp
    return F.interpolate(band[None], size=(band.shape[1], out_w), mode="bilinear", align_corners=False)[0]


def _band_probs(logits: torch.Tensor, size: Tuple[int, int], rows: slice, p: PostParams) -> torch.Tensor:
    same = tuple(logits.shape[-2:]) == tuple(size)
    resized = logits[:, rows] if same else _resize_rows_on(logits, size, rows)
    return pool_classes_on(torch.softmax(resized * p.logit_scale, dim=0), p)  # (C, r, W)


def postprocess_on_device(logits: torch.Tensor, size: Tuple[int, int], p: PostParams, return_probs: bool = False,
                          return_confidence: bool = False, max_elements: int = 1 << 27) -> DeviceResult:
    """Averaged logits (Q, h, w) on any device → compact outputs at ``size`` = (H, W), on the same device.

    Bands of rows bound the (C, rows, W) float32 working set by ``max_elements`` (512 MB at the default)."""
    dev = logits.device
    logits = logits.float()
    height, width = size
    c = p.num_classes
    per_row = max(len(p.query_to_class), c) * width
    step = max(1, max_elements // max(per_row, 1))
    bands = [slice(r, min(r + step, height)) for r in range(0, height, step)]
    keep = torch.ones(c, device=dev)
    if p.area_thd is not None:  # SCLIP: drop classes whose argmax area is too small (never class 0)
        area = torch.zeros(c, device=dev)
        for rows in bands:
            arg = _band_probs(logits, size, rows, p).argmax(0).flatten()
            area.index_add_(0, arg, torch.ones(arg.numel(), device=dev))
        fg = area[1:]
        keep[1:] = (fg > p.area_thd * fg.sum()).float()
    labels = torch.empty((height, width), dtype=label_dtype(c), device=dev)
    sums = torch.zeros(c, dtype=torch.float64, device=dev)
    counts = torch.zeros(c, dtype=torch.int64, device=dev)
    probs_out = torch.empty((c, height, width), device=dev) if return_probs else None
    confidence = torch.empty((height, width), device=dev) if return_confidence else None
    label_probs = torch.empty((height, width), device=dev) if return_confidence else None
    for rows in bands:
        probs = _band_probs(logits, size, rows, p) * keep.view(-1, 1, 1)  # (C, r, W)
        maxp, pred = probs.max(dim=0)
        if confidence is not None:
            confidence[rows] = maxp
        pred = pred.masked_fill(maxp < p.prob_thd, 0)
        at = probs.gather(0, pred[None])[0]  # probability of the assigned class
        if label_probs is not None:
            label_probs[rows] = at
        flat = pred.flatten()
        sums.index_add_(0, flat, at.flatten().double())
        counts.index_add_(0, flat, torch.ones_like(flat))
        labels[rows] = pred.to(labels.dtype)
        if probs_out is not None:
            probs_out[:, rows] = probs
    scores = (sums / counts).float()  # 0/0 → NaN where a class is absent, as on the CPU path
    return DeviceResult(labels, counts, scores, probs_out, confidence, label_probs)


def to_host(results: Sequence[DeviceResult]) -> List[SegmentationResult]:
    """Copy the compact outputs of a call to the host: one copy per tensor, into pinned buffers with
    ``non_blocking`` on CUDA and one synchronisation for the whole call; labels become int32 on the host."""
    host: List[Dict[str, torch.Tensor]] = []
    cuda = any(r.labels.device.type == "cuda" for r in results)
    for r in results:
        out = {}
        for name, t in r.tensors().items():
            if t.device.type == "cpu":
                out[name] = t
            else:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=cuda)
                out[name] = buf.copy_(t, non_blocking=cuda)
        host.append(out)
    if cuda:
        torch.cuda.synchronize()
    return [SegmentationResult(labels=h["labels"].numpy().astype(np.int32), class_scores=h["scores"].numpy(),
                               pixel_counts=h["counts"].numpy(),
                               probs=h["probs"].numpy() if "probs" in h else None,
                               confidence=h["confidence"].numpy() if "confidence" in h else None,
                               label_probs=h["label_probs"].numpy() if "label_probs" in h else None)
            for h in host]
