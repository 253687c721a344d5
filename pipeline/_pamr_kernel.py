"""A fused PAMR iteration for CPU (numba): one pass over the mask per iteration instead of one per
neighbour. Optional: ``pipeline.pamr`` falls back to pure torch when numba is not importable.

Layout: mask (C, H + 2m, W + 2m) replicate-padded by the largest dilation m; weights (P, H, W);
neighbour offsets (P,) in pixels. Rows are processed in parallel; for each row the P weight rows stay in
cache while every channel is updated. Sums run over neighbours in order, like the torch path.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, nogil=True)
def pamr_iteration(padded: np.ndarray, weights: np.ndarray, dy: np.ndarray, dx: np.ndarray, margin: int,
                   out: np.ndarray) -> None:  # pragma: no cover - compiled
    channels = padded.shape[0]
    npts, height, width = weights.shape
    for y in numba.prange(height):
        acc = np.empty(width, dtype=np.float32)
        for c in range(channels):
            acc[:] = 0.0
            for n in range(npts):
                row = padded[c, y + margin + dy[n]]
                x0 = margin + dx[n]
                w = weights[n, y]
                for x in range(width):
                    acc[x] += w[x] * row[x0 + x]
            out[c, y] = acc
