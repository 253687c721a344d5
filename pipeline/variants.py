"""Registry of last-block attention variants, composed from orthogonal parts (METHODS.md §2).

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
from typing import Callable, Dict, List, Optional, Tuple

import torch

# logits kind -> f(q, k, scale) with q, k (B, h, T, d) -> (B, h, T, T)
LOGITS: Dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "qk": lambda q, k, s: (q * s) @ k.transpose(-1, -2),  # parity: official scales q before the product
    "qq": lambda q, k, s: (q @ q.transpose(-1, -2)) * s,
    "kk": lambda q, k, s: (k @ k.transpose(-1, -2)) * s,
}


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
METHODS: Dict[str, Tuple[bool, bool]] = {"resclip": (True, True), "rcs": (True, False), "sfr": (False, True), "none": (False, False)}


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


def sfr_mix(logits: torch.Tensor, sfr: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """τ·((1−λ)·logits + λ·Ŝ) with Ŝ (B, 1, T, T) already max-normalised and fp16 (METHODS §2.5 g).

    parity: λ·Ŝ is computed in float16 like the official code, then promoted to the logits' dtype.
    """
    return tau * ((1 - lam) * logits + (lam * sfr).to(logits.dtype))


def rcs_mix(attn: torch.Tensor, attn_rcs: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """τ·((1−λ)·A + λ·A_rcs); rows then sum to τ (parity: τ = 2 in all configs)."""
    return tau * ((1 - lam) * attn + lam * attn_rcs)


def attention_probs(variant: Variant, q: torch.Tensor, k: torch.Tensor, scale: float,
                    omega: Optional[torch.Tensor] = None, sfr: Optional[torch.Tensor] = None,
                    attn_rcs: Optional[torch.Tensor] = None, sfr_weights: Tuple[float, float] = (1.0, 0.0),
                    rcs_weights: Tuple[float, float] = (1.0, 0.0)) -> torch.Tensor:
    """Row-stochastic (×τ) last-block attention of ``variant``.

    Args:
        q, k: (B, h, T, d) per-head queries/keys, T = N + 1 tokens.
        omega: (1, 1, T, T) Gaussian prior (zero [cls] row/column), used if the base has one.
        sfr: (B, 1, T, T) float16 SFR matrix Ŝ/max(Ŝ), or None (no SFR in this pass).
        attn_rcs: (B, h, T, T) mean attention of the RCS layers, or None.
    Returns: (B, h, T, T) attention weights.
    """
    probs = None
    for kind in variant.base.logits:
        logits = LOGITS[kind](q, k, scale)
        if sfr is not None:
            logits = sfr_mix(logits, sfr, *sfr_weights)
        if variant.base.gaussian_prior:
            logits = logits + omega
        p = torch.softmax(logits, dim=-1)
        probs = p if probs is None else probs + p
    if attn_rcs is not None:
        probs = rcs_mix(probs, attn_rcs, *rcs_weights)
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
