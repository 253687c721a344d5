"""The dense core on a tiny random ViT: every registered variant, parity of the vanilla path with
open_clip's own forward, batched == per-crop, presets, text cache, precision, and bad input."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import ConfigError, ModelConfig, get_preset, list_presets, list_variants
from pipeline.method.dense import DenseParams, crop_logits, embed, trunk
from pipeline.method.preprocess import ImageError
from pipeline.method.variants import BASES, attention_probs, get_variant
from pipeline.model.text import TextEmbeddings, encode_vocabulary
from pipeline.model.vocabulary import Vocabulary
from pipeline.segmenter import Segmenter


@pytest.fixture(scope="module")
def seg(tiny_arch, tiny_weights, tiny_vocab_file, tiny_templates_file):
    cfg = get_preset("ade20k", vocabulary=tiny_vocab_file, templates=tiny_templates_file, temp_thd=0.0)
    return Segmenter.build(cfg, ModelConfig(arch=tiny_arch, weights=tiny_weights, device="cpu"))


def _images(n=3, seed=0):
    rng = np.random.RandomState(seed)
    sizes = [(240, 320), (180, 260), (300, 240)][:n]
    return [(rng.rand(h, w, 3) * 255).astype(np.uint8) for h, w in sizes]


def test_vanilla_path_equals_open_clip_tokens(seg):
    """method none / base vanilla keeps residual+FFN and q·k attention: exactly CLIP's forward."""
    x = torch.randn(2, 3, 224, 224)
    vp = seg.vision
    tokens, grid = embed(vp, x)
    x11, _ = trunk(vp, tokens, capture=(3, 7))  # captured layers are computed explicitly
    from pipeline.method.dense import last_block

    out = last_block(vp, x11, DenseParams(get_variant("none", "vanilla")), grid, None, None)
    ours = vp.ln_post(out)
    model = seg.model
    model.visual.output_tokens = True
    try:
        with torch.no_grad():
            _, ref_tokens = model.visual(x)
    finally:
        model.visual.output_tokens = False
    torch.testing.assert_close(ours[:, 1:], ref_tokens, atol=2e-5, rtol=1e-5)


def test_trunk_rcs_mean_and_shared_projections(seg):
    """The RCS mean is summed as layers run (== stack + mean of the captured maps, bit for bit); the last
    block's q/k/v subsets are slices of the full in-projection; sharing them between SFR's two passes
    changes nothing."""
    from pipeline.method.dense import _block_with_attention, _project, last_block, last_block_inputs

    vp = seg.vision
    tokens, grid = embed(vp, torch.randn(2, 3, 224, 240))
    x11, mean = trunk(vp, tokens, capture=(6, 7, 8, 9))
    maps, x = [], tokens
    with torch.no_grad():
        for layer, blk in enumerate(vp.blocks[:-1], start=1):
            if layer in (6, 7, 8, 9):
                x, attn = _block_with_attention(blk, x)
                maps.append(attn)
            else:
                x = blk.module(x)
        assert torch.equal(x11, x) and torch.equal(mean, torch.stack(maps).mean(dim=0))
        assert trunk(vp, tokens, capture=())[1] is None
        q, k, v = _project(vp.blocks[-1], x11, "qkv")
        for parts in ("k", "kv", "qv", "q"):
            got = _project(vp.blocks[-1], x11, parts)
            for name, full, part in zip("qkv", (q, k, v), got):
                assert (part is None) == (name not in parts)
                if part is not None:
                    torch.testing.assert_close(part, full, atol=1e-6, rtol=1e-6)
        p = dataclasses.replace(seg.dense_params, variant=get_variant("resclip", "naclip"))
        qkv = last_block_inputs(vp, x11, p)
        assert qkv[0] is None  # NACLIP's key-key attention never reads q
        torch.testing.assert_close(last_block(vp, x11, p, grid, mean, None, qkv),
                                   last_block(vp, x11, p, grid, mean, None), atol=0, rtol=0)


@pytest.mark.parametrize("name", list_variants())
def test_every_variant_runs(seg, name):
    method, base = name.split("/")
    p = dataclasses.replace(seg.dense_params, variant=get_variant(method, base), temp_thd=0.0)
    x = torch.randn(2, 3, 224, 240)
    out = crop_logits(seg.vision, x, seg._text, p)
    assert out.shape == (2, 7, 224, 240) and torch.isfinite(out).all()
    assert out.abs().max() <= 1.0 + 1e-5  # cosine logits


@pytest.mark.parametrize("base", sorted(BASES))
def test_attention_rows(base):
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    omega = torch.zeros(1, 1, 10, 10)
    a = attention_probs(get_variant("none", base), q, k, 8 ** -0.5, omega=omega)
    rows = 2.0 if base == "sclip" else 1.0  # SCLIP sums two softmaxes
    torch.testing.assert_close(a.sum(-1), torch.full((2, 3, 10), rows))
    rcs = torch.softmax(torch.randn(2, 3, 10, 10), -1)
    a2 = attention_probs(get_variant("rcs", base), q, k, 8 ** -0.5, omega=omega, attn_rcs=rcs, rcs_weights=(2.0, 0.3))
    torch.testing.assert_close(a2.sum(-1), torch.full((2, 3, 10), 2.0 * (0.7 * rows + 0.3)))


@pytest.mark.parametrize("base", sorted(BASES))
def test_sfr_passes_share_logits_bit_equal(base):
    """SFR's preliminary and final passes computed from one set of base logits (kept by the first pass,
    changed in place by the second) give exactly what two independent computations give."""
    from pipeline.method.variants import base_logits

    torch.manual_seed(1)
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    omega = torch.rand(1, 1, 10, 10)
    rcs = torch.softmax(torch.randn(2, 3, 10, 10), -1)
    sfr = torch.rand(2, 1, 10, 10).half()
    variant = get_variant("resclip", base)
    kw = dict(omega=omega, attn_rcs=rcs, sfr_weights=(2.1, 0.7), rcs_weights=(2.0, 0.3))
    shared = base_logits(variant.base, q, k, 8 ** -0.5)
    before = [t.clone() for t in shared]
    pre = attention_probs(variant, q, k, 8 ** -0.5, **kw, logits=shared, keep_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(shared, before))  # left for the final pass
    fin = attention_probs(variant, q, k, 8 ** -0.5, sfr=sfr, **kw, logits=shared)
    assert torch.equal(pre, attention_probs(variant, q, k, 8 ** -0.5, **kw))
    assert torch.equal(fin, attention_probs(variant, q, k, 8 ** -0.5, sfr=sfr, **kw))
    assert not torch.equal(pre, fin)


def test_variants_differ(seg):
    x = torch.randn(1, 3, 224, 224)
    outs = {n: crop_logits(seg.vision, x, seg._text,
                           dataclasses.replace(seg.dense_params, variant=get_variant(*n.split("/"))))
            for n in ("none/naclip", "rcs/naclip", "sfr/naclip", "resclip/naclip", "none/sclip")}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (outs[a] - outs[b]).abs().max() > 1e-4, (a, b)


def test_registry_errors_list_names():
    with pytest.raises(KeyError, match="naclip"):
        get_variant("resclip", "nope")
    with pytest.raises(KeyError, match="resclip"):
        get_variant("nope", "naclip")
    with pytest.raises(KeyError, match="voc21"):
        get_preset("voc99")
    with pytest.raises(ConfigError, match="unknown SegmenterConfig fields \\['prob_threshold'\\]"):
        get_preset("voc21", prob_threshold=0.2)


def test_batched_equals_per_crop(seg):
    imgs = _images()
    batched = seg.segment(imgs, return_probs=True)
    single = Segmenter(dataclasses.replace(seg.config, crops_per_forward=1), seg.model_config, seg.model,
                       seg.weights_digest, seg.vocabulary, seg.text)
    for img, b in zip(imgs, batched):
        s = single.segment([img], return_probs=True)[0]
        np.testing.assert_allclose(b.probs, s.probs, atol=1e-5)
        assert (b.labels == s.labels).mean() > 0.999
    x = torch.stack([torch.randn(3, 224, 336) for _ in range(2)])
    torch.testing.assert_close(seg.dense_logits(x), torch.cat([single.dense_logits(x[i:i + 1]) for i in range(2)]),
                               atol=1e-5, rtol=1e-5)


def test_reused_output_buffer_is_per_thread(seg):
    """_run writes into a reused buffer: results must not depend on what ran before, nor on another
    thread segmenting with the same segmenter at the same time."""
    import threading

    imgs = _images()
    alone = [seg.segment([img], return_probs=True)[0] for img in imgs]
    results = {}

    def work(i):
        results[i] = [seg.segment([imgs[i]], return_probs=True)[0] for _ in range(2)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(imgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ref in enumerate(alone):  # (a shared buffer would mix images: errors of order 1, not 1e-6)
        for got in results[i]:
            np.testing.assert_allclose(got.probs, ref.probs, atol=1e-5)
            assert (got.labels == ref.labels).mean() > 0.999


def test_results_at_original_size(seg):
    img = _images(1)[0]
    r = seg.segment([img], return_probs=True)[0]
    assert r.labels.shape == img.shape[:2] and r.labels.dtype == np.int32
    assert r.pixel_counts.sum() == img.shape[0] * img.shape[1]
    present = r.pixel_counts > 0
    assert np.isnan(r.class_scores[~present]).all()
    for c in np.flatnonzero(present):
        assert r.class_scores[c] == pytest.approx(r.probs[c][r.labels == c].mean(), rel=1e-4)
    assert r.probs.shape == (4, *img.shape[:2])


def test_whole_image_and_sliding_presets(tiny_arch, tiny_weights, tiny_vocab_file, tiny_templates_file, seg):
    img = _images(1)[0]
    for name in ("voc21", "cityscapes"):
        cfg = get_preset(name, vocabulary=tiny_vocab_file, templates=tiny_templates_file)
        s = Segmenter(cfg, seg.model_config, seg.model, seg.weights_digest, seg.vocabulary, seg.text)
        r = s.segment([img])[0]
        assert r.labels.shape == img.shape[:2]


@pytest.mark.parametrize("base", ["naclip", "sclip", "clearclip"])
def test_base_frames(base, tiny_vocab_file, tiny_templates_file, seg):
    cfg = get_preset("voc21", method="none", base=base, vocabulary=tiny_vocab_file, templates=tiny_templates_file)
    s = Segmenter(cfg, seg.model_config, seg.model, seg.weights_digest, seg.vocabulary, seg.text)
    img = _images(1)[0][:100, :150]
    assert s.segment([img])[0].labels.shape == (100, 150)
    whole = Segmenter(dataclasses.replace(cfg, slide_crop=0), seg.model_config, seg.model, seg.weights_digest,
                      seg.vocabulary, seg.text)
    assert whole.segment([img])[0].labels.shape == (100, 150)


def test_presets_table():
    assert list_presets() == ["voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade20k",
                              "coco_stuff"]
    voc = get_preset("voc21")
    assert (voc.slide_crop, voc.prob_thd, voc.temp_thd, voc.rcs_weights,
            voc.sfr_weights) == (0, 0.1, 0.5, (2.0, 0.3), (2.2, 0.7))
    city = get_preset("cityscapes")
    assert (city.resize_short, city.slide_crop, city.slide_stride) == (560, 224, 112)
    assert get_preset("ade20k", temp_thd=0.3).temp_thd == 0.3
    sclip = get_preset("voc21", method="none", base="sclip")
    assert (sclip.logit_scale, sclip.area_thd, sclip.slide_crop) == (65.0, 0.1, 224)
    nac = get_preset("context59", method="none", base="naclip")
    assert nac.pamr_steps == 10


def test_bad_images(seg):
    with pytest.raises(ImageError, match="tiny.png: size 8x12 after resizing is smaller than one 16x16 patch"):
        seg.segment_prepared([np.zeros((8, 12, 3), np.uint8)], [(8, 12)], names=["tiny.png"])
    with pytest.raises(ImageError, match="empty.png: has a zero side"):
        seg.segment([np.zeros((0, 10, 3), np.uint8)], names=["empty.png"])
    # A 1x1 image is resized up to the short side and labelled at 1x1.
    assert seg.segment([np.zeros((1, 1, 3), np.uint8)])[0].labels.shape == (1, 1)


def test_bad_config_before_model_work(tiny_arch, tiny_weights):
    with pytest.raises(ConfigError, match="temp_thd"):
        Segmenter.build(get_preset("voc21", temp_thd=2.0), ModelConfig(arch=tiny_arch, weights=tiny_weights))
    with pytest.raises(ConfigError, match="no-such-vocab.txt"):
        Segmenter.build(get_preset("voc21", vocabulary="no-such-vocab.txt"),
                        ModelConfig(arch=tiny_arch, weights=tiny_weights))


def test_text_cache_round_trip(tmp_path, tiny_arch, tiny_weights, tiny_vocab_file, tiny_templates_file):
    mc = ModelConfig(arch=tiny_arch, weights=tiny_weights)
    vocab = Vocabulary.load(tiny_vocab_file, tiny_templates_file)
    te = encode_vocabulary(mc, vocab, cache_uri=str(tmp_path))
    assert te.embeddings.shape == (7, 32)
    torch.testing.assert_close(te.embeddings.norm(dim=-1), torch.ones(7))
    cached = tmp_path / f"{te.key}.safetensors"
    assert cached.exists()
    # Overwrite the cache with known values: a second call must read them instead of encoding.
    marker = TextEmbeddings(torch.eye(7, 32), te.query_names, te.query_to_class, te.class_names, te.key)
    marker.save(str(cached))
    again = encode_vocabulary(mc, vocab, cache_uri=str(tmp_path))
    torch.testing.assert_close(again.embeddings, torch.eye(7, 32))
    other = Vocabulary.load(tiny_vocab_file)  # 80 templates: another key
    assert encode_vocabulary(mc, other, cache_uri=str(tmp_path)).key != te.key


def test_text_embeddings_must_match_vocabulary(seg, tiny_arch, tiny_weights):
    with pytest.raises(ValueError, match="another vocabulary"):
        Segmenter.build(get_preset("voc21"), ModelConfig(arch=tiny_arch, weights=tiny_weights),
                        text_embeddings=seg.text)


def test_bf16_agrees_with_fp32(seg, tiny_arch, tiny_weights, caplog):
    mc = ModelConfig(arch=tiny_arch, weights=tiny_weights, dtype="bf16")
    with caplog.at_level("WARNING", logger="pipeline.model.clip"):
        bf = Segmenter.build(seg.config, mc, text_embeddings=seg.text)
    # a CPU without native bf16 matmuls is told so (they run ~9x slower than fp32 there)
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert ("without AVX512-BF16 or AMX" in caplog.text) == (not native_bf16)
    assert next(bf.model.parameters()).dtype == torch.bfloat16
    img = _images(1)[0]
    a, b = seg.segment([img], return_probs=True)[0], bf.segment([img])[0]
    assert (a.labels == b.labels).mean() > 0.9
    # away from near-ties (fp32 top-2 class probabilities ≥ 1e-3 apart) bf16 gives the fp32 label
    top2 = np.sort(a.probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) >= 1e-3
    assert clear.mean() > 0.5
    assert (a.labels == b.labels)[clear].mean() > 0.995  # 99.85% on this tiny model, 99.999% on ViT-B/16


@pytest.mark.slow
def test_real_vit_b16_shape(tmp_path):
    """The real ViT-B/16 layout (random weights): whole image with interpolation, then sliding."""
    mc = ModelConfig(arch="ViT-B-16", random_init=True)
    vocab = tmp_path / "v.txt"
    vocab.write_text("cat\ndog\n")
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of a {}.\n")
    seg = Segmenter.build(get_preset("voc20", vocabulary=str(vocab), templates=str(tpl), crops_per_forward=2), mc)
    x = torch.randn(1, 3, 224, 250)
    out = seg.dense_logits(x)
    assert out.shape == (1, 2, 224, 250)
    assert seg.vision.grid_size == (14, 14) and len(seg.vision.blocks) == 12


@pytest.mark.slow
@pytest.mark.parametrize("arch,patch,grid,layers", [("ViT-B-32", 32, 7, 12), ("ViT-L-14", 14, 16, 24)])
def test_other_vit_archs(arch, patch, grid, layers, tmp_path):
    """ResCLIP on other open_clip ViTs (random weights): patch size, grid and depth come from the model;
    RCS stays on layers 6-9 as in the official code."""
    vocab = tmp_path / "v.txt"
    vocab.write_text("cat\ndog, puppy\n")
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of a {}.\n")
    seg = Segmenter.build(get_preset("ade20k", vocabulary=str(vocab), templates=str(tpl)),
                          ModelConfig(arch=arch, random_init=True))
    assert seg.vision.patch_size == (patch, patch) and seg.vision.grid_size == (grid, grid)
    assert len(seg.vision.blocks) == layers and seg.config.rcs_layers == (6, 7, 8, 9)
    assert seg.dense_logits(torch.randn(1, 3, 250, 300)).shape == (1, 3, 250, 300)
    assert seg.segment([np.zeros((120, 200, 3), np.uint8)])[0].labels.shape == (120, 200)
