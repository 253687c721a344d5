"""The device path (what a CUDA actor runs), exercised on CPU with ``RESLABEL_PAMR_KERNEL=torch`` and on ``meta``.

* its labels equal the CPU kernel path's except at near-ties, on images whose text embeddings are drawn from their
  own patch features (several labels per image, ``pipeline.method.probe``);
* nothing is read back to the host between the pixels' upload and the compact outputs. On CPU a device-to-host copy
  is a no-op, so two complementary checks: (1) the whole device path runs on the ``meta`` device, where any
  value read (``.item()``, ``bool(t)``, ``.tolist()``, ``.numpy()``, data-dependent shapes such as ``nonzero`` or
  ``bincount``) raises, and a ``TorchDispatchMode`` counts every copy between devices: after a warm-up call the
  only one is the uint8 pixel upload, one per image shape, and none goes towards the host; (2) on real CPU tensors
  the same mode counts the aten ops that are host synchronisations on CUDA (``_local_scalar_dense`` = ``.item()``
  / ``bool()``, ``nonzero``, ``bincount``, ``unique``, ``masked_select``, ``equal``): zero.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline import ModelConfig, get_preset
from pipeline.method.device_post import label_dtype
from pipeline.method.preprocess import normalise
from pipeline.method.probe import patch_feature_text
from pipeline.method.sfr import patch_vote
from pipeline.model.text import TextEmbeddings
from pipeline.segmenter import Segmenter

SYNC_OPS = ("_local_scalar_dense", "nonzero", "bincount", "unique", "masked_select", "equal", "is_nonzero",
            "_unique2", "repeat_interleave")


class DeviceTraffic(TorchDispatchMode):
    """Counts host synchronisation ops and copies between devices (by direction) while active."""

    def __init__(self):
        super().__init__()
        self.syncs: list = []
        self.uploads: list = []
        self.downloads: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__.split(".")[0]
        if name in SYNC_OPS:
            self.syncs.append(name)
        out = func(*args, **kwargs)
        # under torch.inference_mode a device change dispatches as ``to`` (else as ``_to_copy``)
        if name in ("to", "_to_copy", "copy_", "_copy_from", "_copy_from_and_resize", "lift_fresh_copy"):
            src = [a.device.type for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            dst = out.device.type if isinstance(out, torch.Tensor) else None
            if name == "copy_":  # copy_(self=dst, src)
                src, dst = [args[1].device.type], args[0].device.type
            if dst is not None and any(s != dst for s in src):
                (self.downloads if dst == "cpu" else self.uploads).append((name, tuple(out.shape), src, dst))
        return out


def _blocks(h: int, w: int, seed: int) -> np.ndarray:
    """A picture of flat coloured blocks with a little noise (regions for the labels to follow)."""
    rng = np.random.RandomState(seed)
    colours = rng.randint(0, 256, size=(3, 4, 3))
    img = np.repeat(np.repeat(colours, -(-h // 3), axis=0), -(-w // 4), axis=1)[:h, :w]
    return np.clip(img + rng.randint(-12, 13, size=img.shape), 0, 255).astype(np.uint8)


def _segmenters(preset: str, tiny_arch, tiny_weights, tiny_vocab_file, tiny_templates_file, monkeypatch, **kw):
    """(kernel-path segmenter, device-path segmenter) sharing one model and patch-feature text embeddings."""
    cfg = get_preset(preset, vocabulary=tiny_vocab_file, templates=tiny_templates_file, **kw)
    base = Segmenter.build(cfg, ModelConfig(arch=tiny_arch, weights=tiny_weights, device="cpu"))
    sample = normalise(_blocks(224, 224, 7))[None]
    emb = patch_feature_text(base.vision, sample, base.vocabulary.num_queries, base.dense_params, seed=3)
    te = base.text
    text = TextEmbeddings(emb, te.query_names, te.query_to_class, te.class_names, te.key)
    kernel = Segmenter(cfg, base.model_config, base.model, base.weights_digest, base.vocabulary, text)
    assert not kernel.device_path  # the C++ kernel is built here
    monkeypatch.setenv("RESLABEL_PAMR_KERNEL", "torch")
    device = Segmenter(cfg, base.model_config, base.model, base.weights_digest, base.vocabulary, text)
    assert device.device_path
    monkeypatch.delenv("RESLABEL_PAMR_KERNEL")
    return kernel, device


@pytest.mark.parametrize("preset,kw", [("ade20k", {}), ("voc21", {}), ("context59", {"pamr_steps": 2}),
                                       ("voc21", {"base": "sclip", "method": "none"})])
def test_device_path_labels_equal_kernel_path(preset, kw, tiny_arch, tiny_weights, tiny_vocab_file,
                                              tiny_templates_file, monkeypatch):
    base = kw.pop("base", "naclip")
    method = kw.pop("method", "resclip")
    kernel, device = _segmenters(preset, tiny_arch, tiny_weights, tiny_vocab_file, tiny_templates_file, monkeypatch,
                                 base=base, method=method, **kw)
    images = [_blocks(200, 260, 1), _blocks(240, 180, 2), _blocks(200, 260, 3)]
    ref = kernel.segment(images, return_probs=True)
    monkeypatch.setenv("RESLABEL_PAMR_KERNEL", "torch")
    got = device.segment(images, return_probs=True, return_confidence=True)
    one = [device.segment([img])[0] for img in images]  # batching by shape changes nothing
    labels_seen = set()
    for r, g, o in zip(ref, got, one):
        assert g.labels.dtype == np.int32 and g.labels.shape == r.labels.shape
        labels_seen |= set(np.unique(r.labels).tolist())
        top2 = np.sort(r.probs, axis=0)[-2:]
        clear = (top2[1] - top2[0]) >= 1e-3
        assert clear.mean() > 0.5
        assert (g.labels == r.labels)[clear].all()
        assert (g.labels == r.labels).mean() > 0.97
        np.testing.assert_allclose(g.probs, r.probs, atol=2e-3)
        np.testing.assert_array_equal(g.pixel_counts, np.bincount(g.labels.ravel(), minlength=len(g.pixel_counts)))
        np.testing.assert_array_equal(o.labels, g.labels)
        assert g.confidence is not None and g.label_probs is not None
    assert len(labels_seen) >= 2  # the text side is not degenerate


def test_device_path_reads_nothing_back(tiny_arch, tiny_weights, tiny_vocab_file, tiny_templates_file, monkeypatch):
    """ResCLIP (SFR + RCS, sliding windows) and final PAMR: zero host syncs, zero downloads, one upload per shape."""
    kernel, device = _segmenters("ade20k", tiny_arch, tiny_weights, tiny_vocab_file, tiny_templates_file,
                                 monkeypatch, pamr_steps=2)
    monkeypatch.setenv("RESLABEL_PAMR_KERNEL", "torch")
    images = [_blocks(200, 260, 1), _blocks(240, 180, 2), _blocks(200, 260, 3)]
    sizes = [im.shape[:2] for im in images]
    # (2) real CPU tensors: no op that would synchronise a CUDA stream
    device.segment_on_device(images, sizes, return_confidence=True)  # warm-up
    with DeviceTraffic() as t:
        res = device.segment_on_device(images, sizes, return_confidence=True)
    assert t.syncs == [] and t.downloads == []
    assert all(r.labels.dtype == torch.uint8 and r.counts.shape == (4,) for r in res)
    # (1) on meta: any value read raises; count copies between devices
    meta = Segmenter(device.config, device.model_config, device.model.to("meta"), device.weights_digest,
                     device.vocabulary, device.text)
    assert meta.device.type == "meta" and meta.device_path
    meta.segment_on_device(images, sizes, return_confidence=True)  # warm-up: constants go up once per device
    with DeviceTraffic() as t:
        res = meta.segment_on_device(images, sizes, return_confidence=True)
    assert t.syncs == [] and t.downloads == []
    pixel_uploads = [u for u in t.uploads if u[1][-1] == 3]  # (G, h, w, 3) uint8
    assert len(pixel_uploads) == 2 and len(t.uploads) == 2, t.uploads  # two shapes, nothing else goes up
    assert all(r.labels.device.type == "meta" and r.confidence is not None for r in res)


def test_patch_vote_equals_torch_mode_on_cpu():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 32, 48), generator=g)  # few labels: many ties
    blocks = pred.unfold(1, 16, 16).unfold(2, 16, 16).reshape(3, 2, 3, 256)
    torch.testing.assert_close(patch_vote(pred, (16, 16), 4), torch.mode(blocks, dim=-1).values, rtol=0, atol=0)
    tie = torch.zeros(1, 16, 16, dtype=torch.int64)
    tie[0, :8] = 3  # 128 votes each for 0 and 3
    assert patch_vote(tie, (16, 16), 4).tolist() == [[[0]]]


def test_label_dtype():
    assert label_dtype(21) == torch.uint8 and label_dtype(256) == torch.uint8
    assert label_dtype(257) == torch.int16 and label_dtype(40000) == torch.int32
