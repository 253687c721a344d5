"""Bilinear resizing (align_corners=False, PyTorch/mmseg semantics) as two small matrix products.

Upsampling a (Q, 14, 14) logit grid to 224×224 with ``F.interpolate`` costs one gather per output value;
as Ry · G · Rxᵀ with (out, in) interpolation matrices it is two BLAS calls, and a band of output rows is
just a slice of Ry. Weights follow PyTorch's source-index rule in float32, so results agree with
``F.interpolate`` to float rounding (≈1e-7).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from pipeline.kernels import native as cpu_kernel


@functools.lru_cache(maxsize=64)
def bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) float32 interpolation weights, align_corners=False; rows sum to 1.

    Read off PyTorch's own kernel (resizing the identity basis along one axis), so the weights are
    exactly the ones ``F.interpolate`` uses.
    """
    basis = torch.eye(in_size).view(1, in_size, in_size, 1)  # channel i = e_i along the height
    out = torch.nn.functional.interpolate(basis, size=(out_size, 1), mode="bilinear", align_corners=False)
    return out[0, :, :, 0].T.contiguous()  # (out, in)


@functools.lru_cache(maxsize=128)
def matrix_on(in_size: int, out_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`bilinear_matrix` on ``device`` in ``dtype``, uploaded once per device and kept (no host copy
    per call on a GPU). Read only."""
    return bilinear_matrix(in_size, out_size).to(device, dtype)


def resize_bilinear(x: torch.Tensor, size: Tuple[int, int], rows: Optional[slice] = None,
                    out: Optional[torch.Tensor] = None, native: Optional[bool] = None) -> torch.Tensor:
    """x (..., h, w) → (..., H, W) bilinear (align_corners=False); only output ``rows`` if given.

    ``out``: a contiguous (..., H, W) tensor to write into (a reused buffer: large fresh outputs cost more in
    page faults than in arithmetic, e.g. 44 vs 13 ms for (4, 150, 224, 224) on this project's CPU).
    ``native``: float32 CPU tensors use the CPU kernel's sparse resize (:func:`pipeline.kernels.native.resize`:
    2 multiply-adds per output and axis instead of h or w; the same sums to float rounding, tested) when
    the kernel is available (and ``out``, if given, is contiguous float32): True requires the kernel, False
    never uses it, None follows ``RESLABEL_PAMR_KERNEL`` (:func:`pipeline.kernels.native.for_device`).
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size) and rows is None:
        return x if out is None else out.copy_(x)
    ry = matrix_on(h, size[0], x.device, x.dtype)  # (H, h)
    rx = matrix_on(w, size[1], x.device, x.dtype)  # (W, w)
    if rows is not None:
        ry = ry[rows]
    lib = cpu_kernel.for_device(x.device, native) if x.dtype == torch.float32 else None
    if lib is not None and (out is None or (out.dtype == torch.float32 and out.is_contiguous())):
        return cpu_kernel.resize(lib, x, ry, rx, out=out)
    out_h, out_w = ry.shape[0], rx.shape[0]
    if h * w * out_w + out_h * h * out_w < out_h * h * w + out_h * w * out_w:  # fewer multiply-adds along x first
        return torch.matmul(ry, x @ rx.T, out=out)  # (H, h) @ ((..., h, w) @ (w, W)) → (..., H, W)
    return torch.matmul(ry @ x, rx.T, out=out)  # ((H, h) @ (..., h, w)) @ (w, W) → (..., H, W)
