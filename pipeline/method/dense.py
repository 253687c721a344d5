"""Dense forward of the ViT for a batch of same-size crops (docs/method.md §1.4, §1.6, §2).

``crop_logits`` is the whole per-crop method: embed → layers 1..L−1 (capturing the RCS layers'
attention) → the variant's last block (twice for SFR: a preliminary pass, PAMR, patch labels, Ŝ) →
``ln_post`` on all tokens → ``proj`` → cosine logits with the text embeddings → bilinear to crop size.
All tensors are batch-first: tokens (B, T, D) with T = 1 + hp·wp.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from pipeline.config import SegmenterConfig
from pipeline.kernels.resize import resize_bilinear
from pipeline.method.sfr import preliminary_labels, sfr_matrix
from pipeline.method.variants import Variant, attention_probs, base_logits, gaussian_prior, get_variant
from pipeline.model.clip import Block, VisionParts


@dataclasses.dataclass(frozen=True)
class DenseParams:
    """The per-crop knobs of ``crop_logits`` (a subset of ``SegmenterConfig``)."""

    variant: Variant
    gaussian_std: float = 5.0
    rcs_layers: Tuple[int, ...] = (6, 7, 8, 9)
    rcs_weights: Tuple[float, float] = (2.0, 0.3)
    sfr_weights: Tuple[float, float] = (2.1, 0.7)
    temp_thd: float = 0.1
    delete_same_entity: bool = True
    logit_scale: float = 40.0  # used for the preliminary probabilities of SFR
    sfr_pamr_steps: int = 10  # parity: always 10 iterations, dilations (8, 16) inside SFR
    sfr_pamr_dilations: Tuple[int, ...] = (8, 16)

    @classmethod
    def from_config(cls, config: SegmenterConfig) -> "DenseParams":
        """The variant of ``config.method``/``config.base`` and every field of the same name in ``config``
        (the SFR-internal PAMR settings are not config fields: they keep their fixed values)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"variant"}
        values = {n: getattr(config, n) for n in names if hasattr(config, n)}
        values = {n: tuple(v) if isinstance(v, (list, tuple)) else v for n, v in values.items()}
        return cls(variant=get_variant(config.method, config.base), **values)


def interpolate_pos_embed(pos: torch.Tensor, grid0: Tuple[int, int], grid: Tuple[int, int]) -> torch.Tensor:
    """Positional embedding (1 + hp·wp, D) for a patch grid, from the pretrained (1 + g0h·g0w, D).

    parity: only when the token count differs (so a same-count grid of another shape keeps the original);
    bicubic with the explicit scale factor ((hp + 0.1)/g0h, (wp + 0.1)/g0w), recompute_scale_factor=False.
    """
    n0 = grid0[0] * grid0[1]
    if grid[0] * grid[1] == n0:
        return pos
    dim = pos.shape[-1]
    patch = pos[1:].float().reshape(1, grid0[0], grid0[1], dim).permute(0, 3, 1, 2)  # (1, D, g0h, g0w)
    patch = F.interpolate(patch, scale_factor=((grid[0] + 0.1) / grid0[0], (grid[1] + 0.1) / grid0[1]),
                          mode="bicubic", align_corners=False, recompute_scale_factor=False)
    assert tuple(patch.shape[-2:]) == tuple(grid), (patch.shape, grid)
    patch = patch.permute(0, 2, 3, 1).reshape(-1, dim)  # (hp*wp, D)
    return torch.cat([pos[:1].float(), patch]).to(pos.dtype)


def embed(vp: VisionParts, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Image batch (B, 3, H, W) → tokens (B, 1 + hp·wp, D) after ``ln_pre``, and the grid (hp, wp)."""
    feats = vp.conv1(x.to(vp.conv1.weight.dtype))  # (B, D, hp, wp), floor division by the patch
    grid = (feats.shape[-2], feats.shape[-1])
    feats = feats.flatten(2).transpose(1, 2)  # (B, N, D), raster order r·wp + c
    cls = vp.class_embedding.to(feats.dtype).expand(feats.shape[0], 1, -1)  # (B, 1, D)
    tokens = torch.cat([cls, feats], dim=1)  # (B, T, D)
    tokens = tokens + interpolate_pos_embed(vp.positional_embedding, vp.grid_size, grid).to(tokens.dtype)
    return vp.ln_pre(tokens), grid


def _project(blk: Block, x: torch.Tensor, parts: str) -> List[Optional[torch.Tensor]]:
    """Per-head [q, k, v] (B, h, T, d) from the block's ``ln_1`` and in-projection, only those named in
    ``parts`` (a subset of "qkv"; the others are None): NACLIP's key-key attention never needs q.
    Each contiguous run of the needed parts is one product with a view of the weight (no copy)."""
    b, t, dim = x.shape
    z = blk.ln_1(x)
    out: List[Optional[torch.Tensor]] = [None, None, None]
    wanted = [name in parts for name in "qkv"]
    i = 0
    while i < 3:
        if not wanted[i]:
            i += 1
            continue
        j = i
        while j < 3 and wanted[j]:
            j += 1
        proj = F.linear(z, blk.in_proj_weight[i * dim:j * dim], blk.in_proj_bias[i * dim:j * dim])  # (B, T, n·D)
        heads = proj.reshape(b, t, j - i, blk.num_heads, dim // blk.num_heads).permute(2, 0, 3, 1, 4)
        out[i:j] = list(heads)  # each (B, h, T, d)
        i = j
    return out


def _attend(blk: Block, attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention (B, h, T, T) applied to v (B, h, T, d) → out-projected (B, T, D)."""
    b, h, t, d = v.shape
    out = (attn.to(v.dtype) @ v).transpose(1, 2).reshape(b, t, h * d)  # (B, T, D)
    return blk.out_proj(out)


def _block_with_attention(blk: Block, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A standard CLIP block computed explicitly; returns (output (B, T, D), softmax(s·QKᵀ) (B, h, T, T))."""
    q, k, v = _project(blk, x, "qkv")
    attn = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), dim=-1)
    x = x + blk.ls_1(_attend(blk, attn, v))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x))), attn


def trunk(vp: VisionParts, tokens: torch.Tensor, capture: Sequence[int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Layers 1..L−1 on tokens (B, T, D); returns the output and the mean attention (B, h, T, T) of the
    layers in ``capture`` (1-based; None when empty), summed as each layer runs (no stack of all maps;
    equal to ``torch.stack(maps).mean(0)``, tested bit-equal)."""
    total, count = None, 0
    x = tokens
    for layer, blk in enumerate(vp.blocks[:-1], start=1):
        if layer in capture:
            x, attn = _block_with_attention(blk, x)
            total = attn if total is None else total.add_(attn)
            count += 1
        else:
            x = blk.module(x)
    return x, (total.div_(count) if total is not None else None)


@functools.lru_cache(maxsize=32)
def _omega(grid: Tuple[int, int], std: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return gaussian_prior(grid, std).to(dtype=dtype, device=device)[None, None]  # (1, 1, T, T)


def last_block_inputs(vp: VisionParts, x: torch.Tensor, p: DenseParams) -> List[Optional[torch.Tensor]]:
    """[q, k, v] of the last block for layer-(L−1) tokens (B, T, D): what the variant's attention reads.
    Computed once per crop and shared by SFR's preliminary and final passes (both start from the same x)."""
    return _project(vp.blocks[-1], x, "".join(p.variant.base.logits) + "v")


def _head_scale(v: torch.Tensor) -> float:
    """The attention scale d^-1/2 for per-head tensors (B, h, T, d)."""
    return v.shape[-1] ** -0.5


def last_block(vp: VisionParts, x: torch.Tensor, p: DenseParams, grid: Tuple[int, int],
               attn_rcs: Optional[torch.Tensor], sfr: Optional[torch.Tensor],
               qkv: Optional[Sequence[Optional[torch.Tensor]]] = None,
               logits: Optional[Sequence[torch.Tensor]] = None, keep_logits: bool = False) -> torch.Tensor:
    """The variant's last block on layer-(L−1) tokens (B, T, D) → (B, T, D); ``qkv`` from
    :func:`last_block_inputs` of the same ``x`` (computed here when not given); ``logits``/``keep_logits``:
    the base's attention logits shared by SFR's two passes (:func:`pipeline.method.variants.attention_probs`)."""
    blk = vp.blocks[-1]
    q, k, v = qkv if qkv is not None else last_block_inputs(vp, x, p)
    omega = _omega(grid, p.gaussian_std, v.dtype, v.device) if p.variant.base.gaussian_prior else None
    attn = attention_probs(p.variant, q, k, _head_scale(v), omega=omega, sfr=sfr, attn_rcs=attn_rcs,
                           sfr_weights=p.sfr_weights, rcs_weights=p.rcs_weights, logits=logits,
                           keep_logits=keep_logits)
    out = _attend(blk, attn, v)
    if not p.variant.base.keep_residual:
        return out
    x = x + blk.ls_1(out)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def cosine_logits(vp: VisionParts, x: torch.Tensor, text: torch.Tensor, grid: Tuple[int, int],
                  size: Tuple[int, int], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Last-block tokens (B, T, D) → cosine logits (B, Q, H, W) float32, upsampled (bilinear) to ``size``
    (written into ``out`` when given: see :func:`pipeline.kernels.resize.resize_bilinear`).

    Always float32: with bf16/fp16 weights the tokens are cast up and ln_post, proj and the text embeddings
    are used in float32 (one small (T, D)·(D, E) product). On random ViT-B/16 weights this cuts the
    bf16-vs-fp32 label disagreement 2.5–8× (to 0.6–0.9% of pixels, nearly all at fp32 top-2 class
    probability margins < 1e-3; bench/bf16_agreement.py).
    """
    if x.dtype == torch.float32:
        feats = vp.ln_post(x) @ vp.proj  # (B, T, E); ln_post on all tokens
    else:
        ln = vp.ln_post
        feats = F.layer_norm(x.float(), ln.normalized_shape, ln.weight.float(), ln.bias.float(),
                             ln.eps) @ vp.proj.float()
    feats = feats[:, 1:]  # (B, N, E), drop [cls]
    feats = feats / feats.norm(dim=-1, keepdim=True)
    logits = feats @ text.float().T  # (B, N, Q)
    b, n, q = logits.shape
    logits = logits.transpose(1, 2).reshape(b, q, grid[0], grid[1])  # (B, Q, hp, wp)
    return resize_bilinear(logits, size, out=out)  # == F.interpolate(bilinear, align_corners=False) to ~5e-7


def sfr_from_preliminary(vp: VisionParts, x11: torch.Tensor, crops: torch.Tensor, text: torch.Tensor,
                         p: DenseParams, grid: Tuple[int, int], attn_rcs: Optional[torch.Tensor],
                         qkv: Optional[Sequence[Optional[torch.Tensor]]] = None,
                         logits: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Preliminary pass → PAMR → probabilities → patch labels → Ŝ/max(Ŝ) as (B, 1, T, T) float16.
    ``logits``: the base's attention logits, left unchanged for the final pass (see :func:`last_block`)."""
    prelim = last_block(vp, x11, p, grid, attn_rcs, None, qkv, logits, keep_logits=True)
    logits = cosine_logits(vp, prelim, text, grid, grid)  # (B, Q, hp, wp); upsampled to the crop inside
    labels = preliminary_labels(crops, logits, p.sfr_pamr_steps, p.sfr_pamr_dilations, p.logit_scale,
                                p.temp_thd, vp.patch_size)  # (B, hp, wp) on CPU
    s = sfr_matrix(labels, p.gaussian_std, p.delete_same_entity).to(crops.device)  # (B, T, T) fp32
    s = s / s.amax(dim=(1, 2), keepdim=True)  # parity: one global max per crop
    return s.to(torch.float16).unsqueeze(1)  # parity: the official code casts Ŝ to float16, also on CPU


@torch.no_grad()
def crop_logits(vp: VisionParts, crops: torch.Tensor, text: torch.Tensor, p: DenseParams,
                grid_only: bool = False, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-query cosine logits (B, Q, H, W) for normalised crops (B, 3, H, W) of one size; with
    ``grid_only`` the logits stay at the patch grid (B, Q, hp, wp). ``out``: a (B, Q, H, W) float32 buffer
    on the model's device to write the result into (the segmenter reuses one per crop shape)."""
    tokens, grid = embed(vp, crops)
    capture = p.rcs_layers if p.variant.rcs else ()
    x11, attn_rcs = trunk(vp, tokens, capture)  # attn_rcs (B, h, T, T) or None
    qkv = last_block_inputs(vp, x11, p)
    sfr, logits = None, None
    if p.variant.sfr:  # both passes start from the same attention logits: computed once
        logits = base_logits(p.variant.base, qkv[0], qkv[1], _head_scale(qkv[2]))
        sfr = sfr_from_preliminary(vp, x11, crops, text, p, grid, attn_rcs, qkv, logits)
    tokens_out = last_block(vp, x11, p, grid, attn_rcs, sfr, qkv, logits)
    return cosine_logits(vp, tokens_out, text, grid, grid if grid_only else tuple(crops.shape[-2:]), out=out)
