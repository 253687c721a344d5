"""ResCLIP's semantic feedback refinement (SFR) matrix, batched over crops (METHODS.md §2.5 e–f).

Official functions reproduced: ``create_patch_matrix``, ``check_path`` and ``generate_attention_sfr``
of the ResCLIP repository, including their quirks (marked ``parity:``).
"""
from __future__ import annotations

import functools
from typing import Tuple

import torch
import torch.nn.functional as F

_MAX_PROBE_TABLE = 1 << 22  # pairs × steps above which the path check runs in row chunks


def patch_labels(probs: torch.Tensor, temp_thd: float, patch: Tuple[int, int]) -> torch.Tensor:
    """Per-patch query labels from preliminary probabilities.

    Args:
        probs: (B, Q, H, W) softmax probabilities at crop resolution.
        temp_thd: pixels whose max probability is below it get label 0 (parity: merges with query 0).
        patch: (ph, pw) patch size in pixels; trailing partial patches are dropped.
    Returns: (B, hp, wp) int64, the mode of each patch's ph·pw pixel labels (parity: torch.mode, whose
        CPU tie-break picks the smallest label).
    """
    ph, pw = patch
    maxp, pred = probs.max(dim=1)  # (B, H, W) each
    pred = pred.masked_fill(maxp < temp_thd, 0)
    blocks = pred.unfold(1, ph, ph).unfold(2, pw, pw)  # (B, hp, wp, ph, pw)
    blocks = blocks.reshape(*blocks.shape[:3], ph * pw)  # (B, hp, wp, ph*pw)
    return torch.mode(blocks, dim=-1).values


@functools.lru_cache(maxsize=16)
def _pair_geometry(grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Pair coordinates for a grid: start/end (N², 2) int64 (row, col) and D_max."""
    hp, wp = grid
    idx = torch.arange(hp * wp)
    i, j = torch.meshgrid(idx, idx, indexing="ij")  # (N, N)
    start = torch.stack((i // wp, i % wp), dim=-1).view(-1, 2)  # (N², 2)
    end = torch.stack((j // wp, j % wp), dim=-1).view(-1, 2)
    return start, end, max(hp, wp) - 1


def _probe_chunk(start: torch.Tensor, end: torch.Tensor, steps: torch.Tensor, d_max: int, wp: int):
    """Probe raster indices (P, K) and validity (P, K) for pairs (P, 2) (parity: ``check_path``)."""
    t = torch.linspace(0, 1, steps=d_max + 1).unsqueeze(1).unsqueeze(0)  # (1, K, 1) float32
    cur = start.unsqueeze(1) * (1 - t) + end.unsqueeze(1) * t  # (P, K, 2) float32
    cur = cur.round().long()  # parity: round-half-to-even on the float32 value
    valid = torch.arange(d_max + 1).unsqueeze(0) <= steps.unsqueeze(1)  # (P, K)
    return cur[..., 0] * wp + cur[..., 1], valid


@functools.lru_cache(maxsize=16)
def _probe_table(grid: Tuple[int, int]):
    start, end, d_max = _pair_geometry(grid)
    steps = (end - start).abs().max(dim=1).values
    return _probe_chunk(start, end, steps, d_max, grid[1])


def valid_paths(labels: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """V (B, N, N) bool: every probe on the (partial) segment from i towards j carries label L_i.

    parity: probes are t_k = k / D_max for k ≤ D_ij only, so only the first D_ij/D_max of the segment
    is inspected (METHODS §2.5 f2).
    """
    b, n = labels.shape[0], grid[0] * grid[1]
    flat = labels.reshape(b, n)  # (B, N)
    start, end, d_max = _pair_geometry(grid)
    if d_max == 0:
        return torch.ones(b, n, n, dtype=torch.bool)
    first = start[:, 0] * grid[1] + start[:, 1]  # (N²,) raster index of i
    if n * n * (d_max + 1) <= _MAX_PROBE_TABLE:
        probe, valid = _probe_table(grid)
        ok = (flat[:, probe] == flat[:, first].unsqueeze(-1)) | ~valid  # (B, N², K)
        return ok.all(dim=-1).view(b, n, n)
    out = torch.empty(b, n * n, dtype=torch.bool)
    rows = max(1, _MAX_PROBE_TABLE // (n * (d_max + 1)))
    for r0 in range(0, n, rows):
        sl = slice(r0 * n, min(n, r0 + rows) * n)
        s, e = start[sl], end[sl]
        probe, valid = _probe_chunk(s, e, (e - s).abs().max(dim=1).values, d_max, grid[1])
        out[:, sl] = ((flat[:, probe] == flat[:, first[sl]].unsqueeze(-1)) | ~valid).all(dim=-1)
    return out.view(b, n, n)


def row_smoothing_kernel(n: int, std: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, length min(n, int(6σ+1)) made odd (parity: raster-order smoothing)."""
    size = min(n, int(6 * std + 1))
    size = size if size % 2 == 1 else size + 1
    x = torch.arange(size) - size // 2
    g = torch.exp(-(x ** 2) / (2 * std ** 2))
    return g / g.sum()


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
        start, end, d_max = _pair_geometry((hp, wp))
        steps = (end - start).abs().max(dim=1).values.view(n, n)  # (N, N) Chebyshev distance
        decay = torch.exp(-steps / d_max)
        s = torch.where(valid_paths(labels, (hp, wp)), s, s * decay)
    kernel = row_smoothing_kernel(n, std)
    blurred = F.conv1d(s.reshape(b * n, 1, n), kernel.view(1, 1, -1), padding=kernel.numel() // 2)
    blurred = F.relu(blurred.reshape(b, n, n))  # (B, N, N)
    normed = blurred / (blurred.sum(dim=-1, keepdim=True) + 1e-8)
    out = torch.zeros(b, n + 1, n + 1)
    out[:, 1:, 1:] = normed
    return out
