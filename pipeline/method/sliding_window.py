"""Sliding-window geometry and logit averaging (docs/method.md §1.5; mmseg ``slide_inference``)."""
from __future__ import annotations

from typing import List, Tuple

import torch

Window = Tuple[int, int, int, int]  # (y1, y2, x1, x2), pixels, end exclusive


def window_starts(length: int, crop: int, stride: int) -> List[int]:
    """Start offsets along one side. The last window is pulled back to end at the border; a side
    shorter than the crop gives one window covering it. Example: (500, 224, 112) → [0, 112, 224, 276]."""
    n = max(length - crop + stride - 1, 0) // stride + 1
    starts = []
    for i in range(n):
        end = min(i * stride + crop, length)
        starts.append(max(end - crop, 0))
    return starts


def windows(height: int, width: int, crop: int, stride: int) -> List[Window]:
    """All windows of an image in raster order; every window has size (min(crop, H), min(crop, W))."""
    return [(y, min(y + crop, height), x, min(x + crop, width))
            for y in window_starts(height, crop, stride) for x in window_starts(width, crop, stride)]


class LogitAccumulator:
    """Sum of per-window logits and a per-pixel window count over one image; ``average()`` divides.

    Raw cosine logits (not probabilities) are averaged, as in mmseg.
    """

    def __init__(self, num_queries: int, height: int, width: int):
        self.sum = torch.zeros(num_queries, height, width)  # (Q, H, W) float32
        self.count = torch.zeros(1, height, width)  # (1, H, W)

    def add(self, window: Window, logits: torch.Tensor) -> None:
        """Add logits (Q, y2−y1, x2−x1) of ``window``."""
        y1, y2, x1, x2 = window
        self.sum[:, y1:y2, x1:x2] += logits.float().cpu()
        self.count[:, y1:y2, x1:x2] += 1

    def average(self) -> torch.Tensor:
        """The per-pixel mean (Q, H, W), computed in place: the accumulator is spent afterwards."""
        if bool((self.count == 0).any()):
            raise RuntimeError("sliding windows left pixels uncovered")
        return self.sum.div_(self.count)
