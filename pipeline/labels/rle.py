"""Binary masks ↔ COCO compressed RLE with string counts (pycocotools; COCO-JSON compatible).

An RLE here is ``{"size": [height, width], "counts": str}``; areas are pixels and boxes COCO XYWH
(pixels, float).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils


def encode_mask(mask: np.ndarray) -> Dict:
    """(H, W) bool/0-1 mask → RLE with utf-8 ``counts``."""
    return encode_masks(mask[:, :, None])[0]


def encode_masks(masks: np.ndarray) -> List[Dict]:
    """(H, W, N) bool/0-1 masks → N RLEs (one pycocotools call; it needs Fortran order)."""
    if masks.dtype != np.uint8 or not masks.flags.f_contiguous:
        masks = np.asfortranarray(masks.astype(np.uint8))  # one copy; (H, W, N) uint8 in F order passes as is
    rles = mask_utils.encode(masks)
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("utf-8")} for r in rles]


def _coco(rle: Mapping) -> Dict:
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}


def decode_rle(rle: Mapping) -> np.ndarray:
    """RLE (str or bytes counts) → (H, W) uint8 mask of 0/1."""
    return mask_utils.decode(_coco(rle))


def rle_area(rle: Mapping) -> int:
    """Foreground pixel count."""
    return int(mask_utils.area(_coco(rle)))


def rle_bbox(rle: Mapping) -> List[float]:
    """Tight box [x, y, w, h] in pixels (all zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_coco(rle))]


def rles_bboxes(rles: Sequence[Mapping]) -> np.ndarray:
    """(N, 4) float64 boxes for N RLEs."""
    return mask_utils.toBbox([_coco(r) for r in rles]) if rles else np.zeros((0, 4))
