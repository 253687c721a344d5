"""Image preprocessing (docs/method.md §1.2): keep-ratio resize with mmcv's rule, then mean/std.

Resizing uses OpenCV's bilinear on uint8, as mmcv does, so label maps match the official pipeline.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

import numpy as np

from pipeline.config import SegmenterConfig

if TYPE_CHECKING:  # torch is imported where it is used: the job's read+decode tasks never load it
    import torch

# OpenAI CLIP constants ×255, RGB order.
MEAN = (122.771, 116.746, 104.094)
STD = (68.501, 66.632, 70.323)


class ImageError(ValueError):
    """An image cannot be segmented (bad shape, too small, too large); the message names it."""


def rescale_size(height: int, width: int, short: int, long: int) -> Tuple[int, int]:
    """(new_h, new_w) for mmcv ``rescale`` with ``scale=(long, short)``: the short side becomes
    ``short`` unless the long side would exceed ``long``; rounding is int(x·f + 0.5)."""
    f = min(long / max(height, width), short / min(height, width))
    return int(height * f + 0.5), int(width * f + 0.5)


def check_image(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ImageError(f"{name}: expected an RGB uint8 array (H, W, 3), got shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: has a zero side {image.shape[:2]}")


def resize_for_config(image: np.ndarray, cfg: SegmenterConfig, name: str = "image") -> np.ndarray:
    """RGB uint8 (H, W, 3) → resized RGB uint8 (h, w, 3) per the config's keep-ratio rule."""
    import cv2

    check_image(image, name)
    h, w = rescale_size(image.shape[0], image.shape[1], cfg.resize_short, cfg.resize_long)
    if max(h, w) > cfg.max_side_after_resize:
        raise ImageError(f"{name}: resized size {h}x{w} exceeds max_side_after_resize={cfg.max_side_after_resize}")
    if min(h, w) < 1:
        raise ImageError(f"{name}: size {image.shape[0]}x{image.shape[1]} resizes to an empty image")
    if (h, w) == image.shape[:2]:
        return np.ascontiguousarray(image)
    return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)


def normalise(image: np.ndarray) -> "torch.Tensor":
    """RGB uint8 (H, W, 3) → float32 (3, H, W), (x − mean) / std per channel."""
    import torch

    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float()  # (3, H, W)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std
