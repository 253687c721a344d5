"""Text embeddings that make random weights segment: queries drawn from an image's own patch features.

With random CLIP weights and real class names every pixel's top class is nearly the same everywhere (the text
side is degenerate), so label comparisons between two code paths say little. Taking each query embedding from
the final, projected feature of a random patch of a sample image gives several labels per image with clear
margins: what the device-path tests and ``bench/gpu_check.py`` compare on. Test and benchmark use only.
"""
from __future__ import annotations

import torch

from pipeline.method.dense import DenseParams, embed, last_block, trunk
from pipeline.model.clip import VisionParts


@torch.inference_mode()
def patch_feature_text(vp: VisionParts, x: torch.Tensor, num_queries: int, params: DenseParams,
                       seed: int = 0) -> torch.Tensor:
    """Normalised images (B, 3, H, W) on the model's device → (num_queries, E) float32 unit vectors on the CPU:
    the projected last-block features (the variant's last block, ``ln_post``, ``proj``) of random patches."""
    tokens, grid = embed(vp, x)
    x11, attn_rcs = trunk(vp, tokens, params.rcs_layers if params.variant.rcs else ())
    out = last_block(vp, x11, params, grid, attn_rcs, None)  # (B, T, D)
    feats = (vp.ln_post(out) @ vp.proj).float()[:, 1:]  # (B, N, E)
    feats = feats.reshape(-1, feats.shape[-1])  # (B*N, E)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(feats.shape[0], generator=g)[:num_queries]
    emb = feats.cpu()[pick]
    return emb / emb.norm(dim=-1, keepdim=True)
