"""ResCLIP's semantic feedback refinement (SFR) matrix, batched over crops (docs/method.md §2.5 e–f).

Official functions reproduced: ``create_patch_matrix``, ``check_path`` and ``generate_attention_sfr``
of the ResCLIP repository, including their quirks (marked ``parity:``).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from pipeline.kernels import native as cpu_kernel
from pipeline.kernels.pamr import NEIGHBOUR_OFFSETS, pamr
from pipeline.kernels.resize import bilinear_matrix, resize_bilinear


def patch_labels(probs: torch.Tensor, temp_thd: float, patch: Tuple[int, int]) -> torch.Tensor:
    """Per-patch query labels from preliminary probabilities.

    Args:
        probs: (B, Q, H, W) softmax probabilities at crop resolution.
        temp_thd: pixels whose max probability is below it get label 0 (parity: merges with query 0).
        patch: (ph, pw) patch size in pixels; trailing partial patches are dropped.
    Returns: (B, hp, wp) int64 on ``probs``' device: the most frequent of each patch's ph·pw pixel labels,
        the smallest label among equally frequent ones (parity: ``torch.mode``'s CPU tie rule, which the
        official code follows). Counted as a vote (:func:`patch_vote`) on the probabilities' device: equal
        to ``torch.mode`` on CPU label for label (tested), without the GPU's different tie rule or a copy.
    """
    maxp, pred = probs.max(dim=1)  # (B, H, W) each
    pred = pred.masked_fill(maxp < temp_thd, 0)
    return patch_vote(pred, patch, probs.shape[1])


def patch_vote(pred: torch.Tensor, patch: Tuple[int, int], num_labels: int) -> torch.Tensor:
    """Pixel labels (B, H, W) int64 in [0, num_labels) → (B, hp, wp) int64 per-patch mode, smallest label on
    ties, on ``pred``'s device (a count per patch and label, then ``argmax``, which returns the first maximum)."""
    ph, pw = patch
    blocks = pred.unfold(1, ph, ph).unfold(2, pw, pw)  # (B, hp, wp, ph, pw)
    b, hp, wp = blocks.shape[:3]
    blocks = blocks.reshape(b, hp * wp, ph * pw)  # (B, N, ph*pw)
    votes = torch.zeros(b, hp * wp, num_labels, dtype=torch.int32, device=pred.device)  # (B, N, Q)
    votes.scatter_add_(2, blocks, torch.ones_like(blocks, dtype=torch.int32))
    return votes.argmax(dim=2).reshape(b, hp, wp)


def preliminary_labels(image: torch.Tensor, grid_logits: torch.Tensor, steps: int, dilations: Tuple[int, ...],
                       logit_scale: float, temp_thd: float, patch: Tuple[int, int],
                       native: Optional[bool] = None) -> torch.Tensor:
    """SFR's patch labels from the preliminary pass (docs/method.md §2.5 d–e), on CPU in one fused kernel.

    The grid logits are upsampled bilinearly (align_corners=False) to the guide's size, refined by PAMR
    (``steps`` iterations, ``dilations``) guided by ``image``, soft-maxed over queries with ``logit_scale``,
    thresholded at ``temp_thd`` and voted per patch (:func:`patch_labels`). With the CPU kernel the
    (B, Q, H, W) intermediates never exist (the softmax is kept online per pixel); elsewhere (GPU, or
    ``RESLABEL_PAMR_KERNEL=torch``) the same steps run as torch ops. Both give the same labels except at
    near-ties (probabilities equal to ~1e-6; tested).

    Args:
        image: (B, 3, H, W) normalised crops (the network's input), any float dtype.
        grid_logits: (B, Q, hp, wp) float32 cosine logits at the patch grid.
        native: as for :func:`pipeline.kernels.pamr.pamr`.
    Returns: (B, H // ph, W // pw) int64 query labels, on CPU from the kernel, on the logits' device from torch.
    """
    size = tuple(image.shape[-2:])
    lib = cpu_kernel.for_device(grid_logits.device, native)
    if lib is None:
        logits = pamr(image.float(), resize_bilinear(grid_logits.float(), size, native=False), steps, dilations,
                      native=False)
        probs = torch.softmax(logits * logit_scale, dim=1)
        return patch_labels(probs, temp_thd, patch)
    gh, gw = grid_logits.shape[-2:]
    dy, dx = cpu_kernel.taps(dilations, NEIGHBOUR_OFFSETS)
    weights = cpu_kernel.affinity(lib, image.float(), dilations)
    return cpu_kernel.patch_labels(lib, grid_logits, bilinear_matrix(gh, size[0]), bilinear_matrix(gw, size[1]),
                                    weights, steps, dy, dx, logit_scale, temp_thd, patch)


@functools.lru_cache(maxsize=64)
def _axis_probes(length: int, d_max: int, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Rounded probe coordinate per (start, end, k) along one axis: (length, length, K) int64.

    parity: the official ``check_path`` evaluates start·(1 − t_k) + end·t_k per coordinate in float32
    with t = linspace(0, 1, D_max + 1) and rounds half-to-even; the same expression is used here, once
    per axis instead of once per pair.
    """
    t = torch.linspace(0, 1, steps=d_max + 1)  # (K,) float32
    pos = torch.arange(length).view(-1, 1, 1)  # start coordinate
    end = torch.arange(length).view(1, -1, 1)
    return (pos * (1 - t) + end * t).round().long().to(device)  # (L, L, K), uploaded once per device


@functools.lru_cache(maxsize=64)
def chebyshev(grid: Tuple[int, int], device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """D (N, N) int64: max(|r_i − r_j|, |c_i − c_j|) between patches in raster order (cached per device)."""
    hp, wp = grid
    r = torch.arange(hp).repeat_interleave(wp)  # (N,)
    c = torch.arange(wp).repeat(hp)
    return torch.maximum((r[:, None] - r[None]).abs(), (c[:, None] - c[None]).abs()).to(device)


def valid_paths(labels: torch.Tensor, grid: Tuple[int, int], native: Optional[bool] = None) -> torch.Tensor:
    """V (B, N, N) bool: every probe on the (partial) segment from i towards j carries label L_i.

    parity: probes are t_k = k / D_max for k ≤ D_ij only, so only the first D_ij/D_max of the segment
    is inspected (docs/method.md §2.5 f2). The CPU kernel (``native`` as for :func:`pipeline.kernels.pamr.pamr`)
    walks each pair's probes until the first foreign one; the torch code computes one step k at a time over all
    pairs: O(K·N²) work and O(N²) memory, with the probe coordinates separable per axis. Equal (tested).
    """
    hp, wp = grid
    b, n = labels.shape[0], hp * wp
    flat = labels.reshape(b, n)  # (B, N)
    d_max = max(hp, wp) - 1
    valid = torch.ones(b, n, n, dtype=torch.bool, device=labels.device)
    if d_max == 0:
        return valid
    lib = cpu_kernel.for_device(labels.device, native)
    if lib is not None:
        rows, cols = _axis_probes(hp, d_max), _axis_probes(wp, d_max)  # (hp, hp, K), (wp, wp, K)
        return cpu_kernel.valid_paths(lib, labels.reshape(b, hp, wp), rows, cols)
    rows, cols = _axis_probes(hp, d_max, labels.device), _axis_probes(wp, d_max, labels.device)
    dist = chebyshev(grid, labels.device)
    start = flat.unsqueeze(2)  # (B, N, 1) label of i
    for k in range(1, d_max + 1):  # k = 0 probes i itself
        probe = rows[:, None, :, None, k] * wp + cols[None, :, None, :, k]  # (hp, wp, hp, wp) = (i, j)
        hit = flat[:, probe.reshape(n, n)] == start  # (B, N, N)
        valid &= hit | (dist < k)
    return valid


def row_smoothing_kernel(n: int, std: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, length min(n, int(6σ+1)) made odd (parity: raster-order smoothing)."""
    size = min(n, int(6 * std + 1))
    size = size if size % 2 == 1 else size + 1
    x = torch.arange(size) - size // 2
    g = torch.exp(-(x ** 2) / (2 * std ** 2))
    return g / g.sum()


@functools.lru_cache(maxsize=64)
def _smoothing_kernel_on(n: int, std: float, device: torch.device) -> torch.Tensor:
    return row_smoothing_kernel(n, std).to(device)  # uploaded once per device


def sfr_matrix(labels: torch.Tensor, std: float, delete_same_entity: bool = True) -> torch.Tensor:
    """Ŝ (B, N+1, N+1) float32 from patch labels (B, hp, wp); zero [cls] row and column.

    S_ij = [L_i = L_j]; pairs without a valid path decay by exp(−D_ij / D_max) (Chebyshev distance);
    each row is smoothed by a 1-D Gaussian along the raster order, ReLU'd and normalised to sum 1.
    """
    b, hp, wp = labels.shape
    n = hp * wp
    flat = labels.reshape(b, n)
    s = (flat.unsqueeze(2) == flat.unsqueeze(1)).float()  # (B, N, N)
    if delete_same_entity and n > 1:
        decay = torch.exp(-chebyshev((hp, wp), labels.device) / (max(hp, wp) - 1))  # (N, N)
        s = torch.where(valid_paths(labels, (hp, wp)), s, s * decay)
    kernel = _smoothing_kernel_on(n, std, labels.device)
    blurred = F.conv1d(s.reshape(b * n, 1, n), kernel.view(1, 1, -1), padding=kernel.numel() // 2)
    blurred = F.relu(blurred.reshape(b, n, n))  # (B, N, N)
    normed = blurred / (blurred.sum(dim=-1, keepdim=True) + 1e-8)
    out = torch.zeros(b, n + 1, n + 1, device=labels.device)
    out[:, 1:, 1:] = normed
    return out
