"""Causal prefix encoding of prompts (``pipeline.model.clip.encode_text``, docs/method.md §1.3).

Pins on the installed open_clip what the shortcut relies on: the CLIP text tower has the attributes read
(``TEXT_ATTRS``), its attention mask is causal, and ``encode_text`` reads the end-of-text token (the argmax of the
ids). Then checks the prefix embeddings equal the full-context ones within 1e-5 on several text towers: the tiny
JSON config, a ViT-B/16-shaped text tower (random weights), and a variant (LayerScale, qk-norm blocks, linear
projection with bias, ``eos`` pooling). If a future open_clip changes any of this, these tests fail.
"""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.model.clip import (
    TEXT_ATTRS,
    encode_text,
    resolve_arch,
    text_prefix_unsupported,
    text_read_positions,
)
from pipeline.model.text import encode_queries
from pipeline.model.vocabulary import Vocabulary, default_templates
from tests.conftest import TINY_ARCH, make_openclip_model

TOL = 1e-5
B16 = pytest.mark.slow  # the real text-tower shape: ~63M parameters, seconds per forward on a shared 2-core CPU
TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 16}


def _b16_text_config() -> dict:
    """ViT-B/16's text tower as open_clip registers it (width 512, 8 heads, 12 layers, 77 tokens), tiny vision."""
    import open_clip

    cfg = open_clip.get_model_config("ViT-B-16")
    return {"embed_dim": cfg["embed_dim"], "quick_gelu": True, "vision_cfg": TINY_VISION, "text_cfg": cfg["text_cfg"]}


VARIANT = {"embed_dim": 48, "vision_cfg": TINY_VISION,
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 3,
                        "mlp_ratio": 2.0, "ls_init_value": 0.5, "qk_norm": True, "proj_bias": True,
                        "pool_type": "eos", "eos_id": 49407}}


@pytest.fixture(scope="module")
def arch_paths(tmp_path_factory):
    """name -> architecture JSON path (tiny: the committed config; the others written here)."""
    d = tmp_path_factory.mktemp("text-archs")
    paths = {"tiny": TINY_ARCH}
    for name, cfg in (("textprefix-b16", _b16_text_config()), ("textprefix-variant", VARIANT)):
        (d / f"{name}.json").write_text(json.dumps(cfg))
        paths[name] = str(d / f"{name}.json")
    return paths


class _Models(dict):
    """name -> random CLIP (eval, fp32), built on first use and kept for the module."""

    def __init__(self, paths: dict):
        super().__init__()
        self.paths = paths

    def __missing__(self, name: str):
        self[name] = make_openclip_model(self.paths[name], seed=3)
        return self[name]


@pytest.fixture(scope="module")
def models(arch_paths):
    return _Models(arch_paths)


@pytest.fixture(scope="module")
def tokenizer():
    import open_clip

    return open_clip.get_tokenizer(resolve_arch(TINY_ARCH))


PROMPTS = ["a photo of a cat.", "a bad photo of the dog.", "itap of a person.",
           "a close-up photo of a very large and somewhat blurry potted plant next to the dining table.",
           "x.", "a tattoo of the television monitor, sofa, chair, bottle, bird and the sheep in a field."]


@pytest.mark.parametrize("name", ["tiny", "textprefix-variant", pytest.param("textprefix-b16", marks=B16)])
def test_text_tower_attributes_are_pinned(models, name):
    """Every attribute encode_text reads exists on the installed open_clip's CLIP, for every tested tower."""
    model = models[name]
    for a in TEXT_ATTRS:
        assert hasattr(model, a), f"{name}: open_clip CLIP lacks {a}"
    assert text_prefix_unsupported(model) is None, name


def test_text_tower_is_causal(models, tokenizer):
    """The mask is -inf strictly above the diagonal, 0 elsewhere; and in the full forward, changing any token after
    the end-of-text token leaves ``model.encode_text`` unchanged while changing one before it does not."""
    model = models["tiny"]
    c = model.attn_mask.shape[0]
    expected = torch.full((c, c), float("-inf")).triu(1)
    assert torch.equal(model.attn_mask.cpu(), expected)
    tokens = tokenizer(PROMPTS[:3])  # (3, 77)
    eot = text_read_positions(model, tokens)
    with torch.no_grad():
        ref = model.encode_text(tokens)
        after = tokens.clone()
        g = torch.Generator().manual_seed(0)
        for r, p in enumerate(eot.tolist()):
            after[r, p + 1:] = torch.randint(1, 49406, (c - p - 1,), generator=g)  # below the EOT id
        torch.testing.assert_close(model.encode_text(after), ref, rtol=0, atol=1e-6)
        before = tokens.clone()
        before[:, 1] = 320  # a word id before every EOT
        assert (model.encode_text(before) - ref).abs().max() > 1e-3


def test_encode_text_reads_end_of_text_token(models, tokenizer):
    """``model.encode_text`` is the projected ln_final output at the EOT position (the argmax of the ids, EOT being
    the tokenizer's largest id); text_read_positions finds exactly that position."""
    eot_id = tokenizer.eot_token_id
    assert eot_id == tokenizer.vocab_size - 1  # largest id: argmax pooling finds it
    tokens = tokenizer(PROMPTS)  # (P, 77)
    for name in ("tiny", "textprefix-variant"):  # argmax pooling and eos pooling
        model = models[name]
        pos = text_read_positions(model, tokens)
        assert pos.tolist() == [row.tolist().index(eot_id) for row in tokens]
        seen = {}
        hook = model.ln_final.register_forward_hook(lambda _m, _i, out: seen.setdefault("x", out))
        try:
            with torch.no_grad():
                ref = model.encode_text(tokens)
        finally:
            hook.remove()
        x = seen["x"][torch.arange(len(PROMPTS)), pos]  # (P, W) at the EOT
        proj = model.text_projection
        read = proj(x) if isinstance(proj, torch.nn.Module) else x @ proj
        torch.testing.assert_close(read, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny", "textprefix-variant", pytest.param("textprefix-b16", marks=B16)])
def test_prefix_equals_full_context(models, tokenizer, name):
    """Truncated to the batch's last EOT, embeddings equal the full 77-token ones within 1e-5 (raw and unit)."""
    model = models[name]
    tokens = tokenizer(PROMPTS)
    with torch.no_grad():
        full = model.encode_text(tokens)  # (P, E)
    prefix = encode_text(model, tokens)
    assert prefix.shape == full.shape
    assert (prefix - full).abs().max() <= TOL
    unit = torch.nn.functional.normalize
    assert (unit(prefix, dim=-1) - unit(full, dim=-1)).abs().max() <= TOL
    for i in range(len(PROMPTS)):  # each prompt alone: its own (shortest) prefix
        assert (encode_text(model, tokens[i:i + 1]) - full[i:i + 1]).abs().max() <= TOL


def test_non_causal_or_other_pooling_falls_back_to_full_context(arch_paths, tokenizer):
    """A tower that sees the whole context, or reads the last token, is run in full (same result as encode_text)."""
    model = make_openclip_model(TINY_ARCH, seed=5)
    tokens = tokenizer(PROMPTS[:2])
    model.attn_mask = torch.zeros_like(model.attn_mask)  # bidirectional
    assert "not causal" in text_prefix_unsupported(model)
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens), rtol=0, atol=0)
    model = make_openclip_model(TINY_ARCH, seed=5)
    model.text_pool_type = "last"
    assert "pool type 'last'" in text_prefix_unsupported(model)
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens), rtol=0, atol=0)
    assert "lacks" in text_prefix_unsupported(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["tiny", "textprefix-variant", pytest.param("textprefix-b16", marks=B16)])
def test_encode_queries_equals_full_context_reference(models, tokenizer, name):
    """Grouping prompts by length (small batches, so several groups) and putting them back in order gives the
    embeddings the full-context loop gives: per prompt unit embedding, mean over templates, unit again."""
    model = models[name]
    templates = default_templates()[:12 if name == "tiny" else 3]  # several length groups at batch_size=5
    vocab = Vocabulary.from_lines(["cat", "dog, puppy", "potted plant", "television monitor"], templates)
    got = encode_queries(model, tokenizer, vocab, batch_size=5)  # (Q, E)
    prompts = [p for q in vocab.query_names for p in vocab.prompts(q)]
    with torch.no_grad():
        f = model.encode_text(tokenizer(prompts))  # (Q*T, E) full context, prompt order
    f = f / f.norm(dim=-1, keepdim=True)
    mean = f.reshape(vocab.num_queries, len(templates), -1).mean(dim=1)
    ref = mean / mean.norm(dim=-1, keepdim=True)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= TOL
