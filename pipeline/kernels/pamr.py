"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth 2020), as used by NACLIP and ResCLIP.

Reproduces the ``PAMR`` module shipped with the ResCLIP/NACLIP repositories (docs/method.md §2.6) with
shifted slices instead of per-channel convolutions, so it is batched and cheap in memory. On the CPU the
iterations run in the fused kernel of :mod:`pipeline.kernels.native` when it is available (equal to ~1e-6;
1.5–6× faster, measured); the torch code here is the reference and the fallback, and the path on GPUs.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from pipeline.kernels import native as cpu_kernel

NEIGHBOUR_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]  # the 8 neighbours


def _shifts(x: torch.Tensor, d: int, offsets: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
    """Views of ``x`` (B, C, H, W) shifted by d·offset with replicate padding, each (B, C, H, W)."""
    h, w = x.shape[-2:]
    xp = F.pad(x, [d] * 4, mode="replicate")  # (B, C, H+2d, W+2d)
    return [xp[..., d + dy * d: d + dy * d + h, d + dx * d: d + dx * d + w] for dy, dx in offsets]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Neighbour weights (B, 8·len(dilations), H, W), softmax over neighbours, from a guide (B, 3, H, W)."""
    around = NEIGHBOUR_OFFSETS[:4] + [(0, 0)] + NEIGHBOUR_OFFSETS[4:]  # raster order of the 3x3 window
    window = torch.stack([s for d in dilations for s in _shifts(image, d, around)], dim=2)  # (B, 3, 9·nd, H, W)
    std = window.std(dim=2, keepdim=True)  # (B, 3, 1, H, W) unbiased, pooled over all dilations
    neigh = torch.stack([s for d in dilations for s in _shifts(image, d, NEIGHBOUR_OFFSETS)],
                        dim=2)  # (B, 3, 8·nd, H, W)
    aff = -(image.unsqueeze(2) - neigh).abs() / (1e-8 + 0.1 * std)
    return torch.softmax(aff.mean(dim=1), dim=1)  # (B, 8·nd, H, W)


def _iterate(mask: torch.Tensor, weights: torch.Tensor, steps: int, dilations: Sequence[int]) -> torch.Tensor:
    """``steps`` PAMR iterations of mask (b, q, H, W) with neighbour weights (b, P, H, W).

    One replicate pad by the largest dilation per iteration serves every dilation (clamped indices are
    the same), and the sum over neighbours runs in the fixed order dilation-major, offset-minor.
    """
    h, w = mask.shape[-2:]
    m = max(dilations)
    taps = [(m + dy * d, m + dx * d) for d in dilations for dy, dx in NEIGHBOUR_OFFSETS]
    for _ in range(steps):
        padded = F.pad(mask, [m] * 4, mode="replicate")  # (b, q, H+2m, W+2m)
        y0, x0 = taps[0]
        out = padded[..., y0:y0 + h, x0:x0 + w] * weights[:, 0:1]
        for p, (y0, x0) in enumerate(taps[1:], start=1):
            out.addcmul_(padded[..., y0:y0 + h, x0:x0 + w], weights[:, p:p + 1])
        mask = out
    return mask


def pamr(image: torch.Tensor, mask: torch.Tensor, steps: int, dilations: Sequence[int] = (8, 16),
         channels_per_chunk: Optional[int] = None, native: Optional[bool] = None) -> torch.Tensor:
    """Refine ``mask`` (B, Q, h, w) guided by ``image`` (B, 3, H, W); returns (B, Q, H, W) float32.

    The mask is first resized to the image (bilinear, align_corners=True), then ``steps`` times replaced
    by the affinity-weighted average of its 8·len(dilations) dilated neighbours (replicate padding).

    Args:
        channels_per_chunk: torch path only. Channels are independent, so on the CPU they are refined 8 at a
            time (the default): the working set of all iterations then stays in cache instead of streaming
            (Q, H, W) through memory 16·steps times. On a GPU all channels go at once (fewer launches).
        native: use the fused CPU kernel (True: required; False: never; None: as ``RESLABEL_PAMR_KERNEL``
            says, default when available). Only CPU tensors can use it.
    """
    image = image.float()
    mask = mask.float()
    if mask.shape[-2:] != image.shape[-2:]:
        mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)
    lib = cpu_kernel.for_device(mask.device, native)
    if lib is not None:
        dy, dx = cpu_kernel.taps(dilations, NEIGHBOUR_OFFSETS)
        weights = cpu_kernel.affinity(lib, image, dilations)  # the kernel's layout (cpu_kernel.layout_shape)
        return cpu_kernel.iterate(lib, mask, weights, steps, dy, dx)
    weights = pamr_affinity(image, dilations)  # (B, P, H, W)
    if channels_per_chunk is None:
        channels_per_chunk = 8 if mask.device.type == "cpu" else mask.shape[1]
    out = torch.empty_like(mask)
    for b in range(mask.shape[0]):
        for c0 in range(0, mask.shape[1], channels_per_chunk):
            sl = slice(c0, c0 + channels_per_chunk)
            out[b:b + 1, sl] = _iterate(mask[b:b + 1, sl], weights[b:b + 1], steps, dilations)
    return out
