"""Text side (docs/method.md §1.3): one L2-normalised embedding per query, computed once and shared.

For each query the prompts of all templates are encoded, each embedding is L2-normalised, the mean is
taken and normalised again → ``T`` of shape (Q, E). Prompts of many queries go through the text tower
together in batches. The result is keyed by a content hash (architecture, weights digest, dtype,
queries, templates) so a job can reuse it from a cache URI instead of encoding again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Optional, Tuple

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.io import uri as uris
from pipeline.model.vocabulary import Vocabulary

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TextEmbeddings:
    """(Q, E) float32 query embeddings (unit rows, CPU) with the vocabulary they belong to."""

    embeddings: torch.Tensor
    query_names: Tuple[str, ...]
    query_to_class: Tuple[int, ...]
    class_names: Tuple[str, ...]
    key: str

    def save(self, uri: str) -> None:
        """Write to a local path or s3:// URI, taken literally (safetensors with the names in its metadata).

        The file appears whole or not at all (local: temp file + rename; S3: one PUT).
        """
        from safetensors.torch import save

        meta = {"query_names": json.dumps(self.query_names), "query_to_class": json.dumps(self.query_to_class),
                "class_names": json.dumps(self.class_names), "key": self.key}
        uris.write_bytes(uri, save({"embeddings": self.embeddings.contiguous()}, metadata=meta))

    @classmethod
    def load(cls, uri: str) -> "TextEmbeddings":
        """Read embeddings written by ``save`` (``FileNotFoundError`` when ``uri`` does not exist)."""
        from safetensors.torch import load

        blob = uris.read_bytes(uri)
        tensors = load(blob)
        header_len = int.from_bytes(blob[:8], "little")  # safetensors: u64 length, then a JSON header
        meta = json.loads(blob[8:8 + header_len])["__metadata__"]
        return cls(tensors["embeddings"].float(), tuple(json.loads(meta["query_names"])),
                   tuple(json.loads(meta["query_to_class"])), tuple(json.loads(meta["class_names"])), meta["key"])

    def matches(self, vocab: Vocabulary) -> bool:
        return self.query_names == vocab.query_names and self.query_to_class == vocab.query_to_class


def text_key(arch: str, weights_digest: str, dtype: str, vocab: Vocabulary) -> str:
    """Content hash identifying the embeddings of ``vocab`` under one model."""
    blob = json.dumps([arch, weights_digest, dtype, vocab.hash]).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@torch.no_grad()
def encode_queries(model: nn.Module, tokenizer, vocab: Vocabulary, batch_size: int = 256) -> torch.Tensor:
    """(Q, E) float32 unit embeddings; prompts are encoded ``batch_size`` at a time across queries.

    The text tower is causal and read at the end-of-text token, so each batch runs only up to its longest
    prompt's end-of-text token (``pipeline.model.clip.encode_text``), and prompts are batched by length (sorted by
    token count, longest first; results put back in prompt order) so short prompts do not run at a long one's
    length. Equal to encoding the full context within float rounding (tests/test_text_prefix.py: <= 1e-5).
    Logs progress after every batch (prompts done / total, prompts per second, seconds left)."""
    from pipeline.model.clip import encode_text, text_prefix_unsupported, text_read_positions

    prompts = [p for q in vocab.query_names for p in vocab.prompts(q)]  # Q*T prompts, query-major
    device = next(model.parameters()).device
    tokens = tokenizer(prompts)  # (P, C) ids
    why_full = text_prefix_unsupported(model)
    if why_full is None:
        lengths = text_read_positions(model, tokens) + 1  # (P,) tokens up to and including end-of-text
        order = torch.argsort(lengths, descending=True, stable=True)  # (P,) longest first: "s left" errs high
    else:
        log.info("text embeddings: full %d-token context (%s)", tokens.shape[1], why_full)
        lengths = torch.full((len(prompts),), tokens.shape[1])
        order = torch.arange(len(prompts))
    n_batches = -(-len(prompts) // batch_size)
    log.info("text embeddings: encoding %d prompts (%d queries x %d templates) in %d batches on %s, %d-%d tokens "
             "of %d", len(prompts), vocab.num_queries, len(vocab.templates), n_batches, device,
             int(lengths.min()), int(lengths.max()), tokens.shape[1])
    t0 = time.perf_counter()
    feats: Optional[torch.Tensor] = None
    for b, i in enumerate(range(0, len(prompts), batch_size), start=1):
        idx = order[i:i + batch_size]  # (b,) prompt indices of this batch
        f = encode_text(model, tokens[idx].to(device)).float()  # (b, E)
        if feats is None:
            feats = torch.empty(len(prompts), f.shape[1], device=f.device)  # (P, E)
        feats[idx.to(f.device)] = f / f.norm(dim=-1, keepdim=True)
        done, dt = min(i + batch_size, len(prompts)), time.perf_counter() - t0
        log.info("text embeddings: batch %d/%d, %d/%d prompts, %.1f prompts/s, ~%.0f s left", b, n_batches, done,
                 len(prompts), done / dt if dt > 0 else 0.0, dt / done * (len(prompts) - done))
    per_prompt = feats.reshape(vocab.num_queries, len(vocab.templates), -1)  # (Q, T, E)
    mean = per_prompt.mean(dim=1)  # (Q, E)
    return (mean / mean.norm(dim=-1, keepdim=True)).cpu()


def cache_target(cache_uri: str, key: str) -> str:
    """URI of the cached embeddings with content key ``key`` under ``cache_uri``."""
    return f"{cache_uri.rstrip('/')}/{key}.safetensors"


def encode_vocabulary(mc: ModelConfig, vocab: Vocabulary, model: Optional[nn.Module] = None,
                      digest: Optional[str] = None, cache_uri: Optional[str] = None,
                      write_cache: bool = True) -> TextEmbeddings:
    """Embeddings of ``vocab`` under ``mc``; reuses ``cache_uri/<key>.safetensors`` when present, else encodes
    (and writes the cache unless ``write_cache`` is False: the job writes it from its driver).

    ``model``/``digest`` may be passed when already built (avoids a second model load).
    """
    from pipeline.model.clip import build_model, tokenizer_for

    if model is None:
        model, digest = build_model(mc)
    key = text_key(mc.arch, digest or "", mc.dtype, vocab)
    target = cache_target(cache_uri, key) if cache_uri else None
    if target is not None:
        try:
            te = TextEmbeddings.load(target)
            if te.key == key and te.matches(vocab):
                log.info("text embeddings loaded from cache %s", target)
                return te
        except FileNotFoundError:
            pass
    emb = encode_queries(model, tokenizer_for(mc), vocab)
    te = TextEmbeddings(emb, vocab.query_names, vocab.query_to_class, vocab.class_names, key)
    if target is not None and write_cache:
        te.save(target)
    return te
