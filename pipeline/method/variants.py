"""Registry of last-block attention variants, composed from orthogonal parts (docs/method.md §2).

A *base* is (attention logits, spatial prior, topology):

=========  ===============  ===============  =====================  ==========================
base       logits           spatial prior    residual + FFN         source
=========  ===============  ===============  =====================  ==========================
vanilla    s·QKᵀ            none             kept                   CLIP (Radford et al. 2021)
sclip      s·QQᵀ ⊕ s·KKᵀ    none             kept                   SCLIP (Wang et al. 2024)
clearclip  s·QQᵀ            none             dropped                ClearCLIP (Lan et al. 2024)
naclip     s·KKᵀ            Gaussian Ω (σ)   dropped                NACLIP (Hajimiri et al. 2025)
=========  ===============  ===============  =====================  ==========================

(⊕: the two logits are soft-maxed separately and the probabilities added; rows sum to 2.)
A *method* adds ResCLIP's parts (Yang et al. 2025) on top of any base: RCS (residual cross-correlation
self-attention: mix in the mean attention of layers 6–9 after the softmax) and/or SFR (semantic
feedback refinement: mix a label-affinity matrix into the logits before the softmax). ``resclip`` is
both; ``rcs``/``sfr`` are the ablations (the official code cannot switch them off); ``none`` is the base.
Official function reproduced: ``VisionTransformer.custom_attn`` of the ResCLIP repository.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

# logits kind -> f(q, k, scale) with q, k (B, h, T, d) -> (B, h, T, T)
LOGITS: Dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "qk": lambda q, k, s: (q * s) @ k.transpose(-1, -2),  # parity: official scales q before the product
    "qq": lambda q, k, s: _gram(q, s),
    "kk": lambda q, k, s: _gram(k, s),
}


def _gram(x: torch.Tensor, s: float) -> torch.Tensor:
    """s·XXᵀ (B, h, T, T) for per-head X (B, h, T, d): the product, then the scale (parity; fp32 and bf16).

    fp16 safety: an unscaled key–key / query–query dot product is 1/s (8× for d = 64) larger than the logit and
    can pass float16's 65504 where the logit does not; in float16 X is scaled by √s first (the same value up to
    rounding), so only a logit that itself overflows can. fp32/bf16 numbers are unchanged."""
    if x.dtype == torch.float16:
        y = x * math.sqrt(s)
        return y @ y.transpose(-1, -2)
    return (x @ x.transpose(-1, -2)).mul_(s)


@dataclasses.dataclass(frozen=True)
class Base:
    name: str
    logits: Tuple[str, ...]  # each soft-maxed separately, probabilities summed
    gaussian_prior: bool  # add Ω (neighbourhood Gaussian, σ = gaussian_std patches) before softmax
    keep_residual: bool  # keep the block's residual and FFN (else output = attention output)
    source: str


@dataclasses.dataclass(frozen=True)
class Variant:
    base: Base
    rcs: bool
    sfr: bool

    @property
    def name(self) -> str:
        return f"{method_name(self.rcs, self.sfr)}/{self.base.name}"


BASES: Dict[str, Base] = {
    "vanilla": Base("vanilla", ("qk",), False, True, "CLIP"),
    "sclip": Base("sclip", ("qq", "kk"), False, True, "SCLIP"),
    "clearclip": Base("clearclip", ("qq",), False, False, "ClearCLIP"),
    "naclip": Base("naclip", ("kk",), True, False, "NACLIP"),
}
METHODS: Dict[str, Tuple[bool, bool]] = {"resclip": (True, True), "rcs": (True, False), "sfr": (False, True),
                                         "none": (False, False)}


def method_name(rcs: bool, sfr: bool) -> str:
    return {v: k for k, v in METHODS.items()}[(rcs, sfr)]


def get_variant(method: str = "resclip", base: str = "naclip") -> Variant:
    """The variant ``method`` on ``base``. Raises ``KeyError`` listing the valid names."""
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if base not in BASES:
        raise KeyError(f"unknown base {base!r}; valid: {', '.join(BASES)}")
    rcs, sfr = METHODS[method]
    return Variant(BASES[base], rcs, sfr)


def list_variants() -> List[str]:
    """All ``method/base`` names, e.g. ``resclip/naclip``."""
    return [f"{m}/{b}" for m in METHODS for b in BASES]


def sfr_term(sfr: torch.Tensor, tau: float, lam: float, dtype: torch.dtype) -> torch.Tensor:
    """τ·λ·Ŝ (B, 1, T, T) in ``dtype``, Ŝ already max-normalised and fp16 (docs/method.md §2.5 g).

    parity: λ·Ŝ is computed in float16 like the official code, then promoted to the logits' dtype.
    """
    return tau * (lam * sfr).to(dtype)


def sfr_mix_(logits: torch.Tensor, tau: float, lam: float, bias: torch.Tensor) -> torch.Tensor:
    """In place: logits ← τ(1−λ)·logits + bias, bias = τλŜ (+ Ω); = τ·((1−λ)·logits + λ·Ŝ) up to rounding."""
    return logits.mul_(tau * (1 - lam)).add_(bias)


def rcs_mix_(attn: torch.Tensor, attn_rcs: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """In place: A ← τ(1−λ)·A + τλ·A_rcs; rows then sum to τ (parity: τ = 2 in all configs)."""
    return attn.mul_(tau * (1 - lam)).add_(attn_rcs, alpha=tau * lam)


def base_logits(base: Base, q: Optional[torch.Tensor], k: Optional[torch.Tensor], scale: float) -> List[torch.Tensor]:
    """The base's attention logits (B, h, T, T), one fresh tensor per kind, from per-head q, k (B, h, T, d)."""
    return [LOGITS[kind](q, k, scale) for kind in base.logits]


def attention_probs(variant: Variant, q: Optional[torch.Tensor], k: Optional[torch.Tensor], scale: float,
                    omega: Optional[torch.Tensor] = None, sfr: Optional[torch.Tensor] = None,
                    attn_rcs: Optional[torch.Tensor] = None, sfr_weights: Tuple[float, float] = (1.0, 0.0),
                    rcs_weights: Tuple[float, float] = (1.0, 0.0), logits: Optional[Sequence[torch.Tensor]] = None,
                    keep_logits: bool = False) -> torch.Tensor:
    """Row-stochastic (×τ) last-block attention of ``variant``.

    The (B, h, T, T) logits are changed in place and the per-pair terms shared by every head (τλŜ and Ω,
    (B, 1, T, T)) are summed once: two passes over the heads' logits instead of five, which matters on
    whole images (T ≈ 650: 5 M entries per pass). Equal to the step-by-step formula up to float rounding.

    Args:
        q, k: (B, h, T, d) per-head queries/keys, T = N + 1 tokens (either may be None where the base's
            logits do not read it).
        omega: (1, 1, T, T) Gaussian prior (zero [cls] row/column), used if the base has one.
        sfr: (B, 1, T, T) float16 SFR matrix Ŝ/max(Ŝ), or None (no SFR in this pass).
        attn_rcs: (B, h, T, T) mean attention of the RCS layers, or None (read only).
        logits: the base's logits, :func:`base_logits` of the same q, k and scale (computed here when None).
            SFR's two passes differ only in Ŝ, so they share one set (a (B, h, T, T) product per kind
            saved: 8–20 ms per whole image on this project's CPU).
        keep_logits: leave ``logits`` unchanged (the preliminary pass; the final pass may then change them
            in place). The same arithmetic either way: results are bit-equal.
    Returns: (B, h, T, T) attention weights.
    """
    dtype = (q if q is not None else k).dtype
    bias = sfr_term(sfr, *sfr_weights, dtype) if sfr is not None else None
    if variant.base.gaussian_prior:
        bias = omega if bias is None else bias + omega  # (B, 1, T, T)
    if logits is None:
        logits, keep_logits = base_logits(variant.base, q, k, scale), False  # fresh: safe to change in place
    probs = None
    for lg in logits:
        if sfr is not None:
            lg = sfr_mix_(lg.clone() if keep_logits else lg, *sfr_weights, bias)
        elif bias is not None:
            lg = lg + bias if keep_logits else lg.add_(bias)
        p = torch.softmax(lg, dim=-1)
        probs = p if probs is None else probs.add_(p)
    if attn_rcs is not None:
        rcs_mix_(probs, attn_rcs, *rcs_weights)
    return probs


def gaussian_prior(grid: Tuple[int, int], std: float) -> torch.Tensor:
    """Ω (1 + hp·wp, 1 + hp·wp) fp32: exp(−‖p_i − p_j‖² / 2σ²) between patch positions, 0 for [cls].

    Closed form of NACLIP's conv-built window (equal to ~1e-7); σ in patches.
    """
    hp, wp = grid
    c = 1.0 / (std * math.sqrt(2.0))
    r = torch.arange(hp).repeat_interleave(wp).float()  # (N,) row of each patch, raster order
    col = torch.arange(wp).repeat(hp).float()  # (N,)
    dr = (r[:, None] - r[None, :]) * c
    dc = (col[:, None] - col[None, :]) * c
    out = torch.zeros(hp * wp + 1, hp * wp + 1)
    out[1:, 1:] = torch.exp(-(dr ** 2 + dc ** 2))
    return out
