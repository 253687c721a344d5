"""Window geometry (§1.5), positional-embedding interpolation (§1.6) and preprocessing (§1.2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import SegmenterConfig
from pipeline.kernels import native as cpu_kernel
from pipeline.kernels.resize import bilinear_matrix
from pipeline.method.dense import interpolate_pos_embed
from pipeline.method.preprocess import ImageError, normalise, rescale_size, resize_for_config
from pipeline.method.sliding_window import LogitAccumulator, window_starts, windows


def test_window_starts_examples():
    assert window_starts(336, 224, 112) == [0, 112]
    assert window_starts(500, 224, 112) == [0, 112, 224, 276]  # last column shifted to the border
    assert window_starts(448, 224, 112) == [0, 112, 224]
    assert window_starts(200, 224, 112) == [0]  # side shorter than the crop: one full-side window
    assert window_starts(672, 224, 224) == [0, 224, 448]  # cityscapes-like, no overlap


def test_windows_cover_and_have_one_size():
    wins = windows(336, 500, 224, 112)
    assert len(wins) == 8
    assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in wins} == {(224, 224)}
    assert windows(200, 300, 224, 112) == [(0, 200, 0, 224), (0, 200, 76, 300)]


def test_accumulator_averages_raw_logits():
    acc = LogitAccumulator(2, 4, 6)
    acc.add((0, 4, 0, 4), torch.ones(2, 4, 4))
    acc.add((0, 4, 2, 6), 3 * torch.ones(2, 4, 4))
    out = acc.average()
    assert out[0, 0, 0] == 1 and out[0, 0, 3] == 2 and out[0, 0, 5] == 3


def test_accumulator_refuses_holes():
    acc = LogitAccumulator(1, 4, 4)
    acc.add((0, 2, 0, 4), torch.ones(1, 2, 4))
    with pytest.raises(RuntimeError, match="uncovered"):
        acc.average()


def test_pos_embed_identity_and_shapes():
    pos = torch.randn(197, 32)
    assert interpolate_pos_embed(pos, (14, 14), (14, 14)) is pos
    out = interpolate_pos_embed(pos, (14, 14), (21, 31))
    assert out.shape == (1 + 21 * 31, 32)
    torch.testing.assert_close(out[0], pos[0])  # [cls] unchanged


def test_pos_embed_uses_the_plus_point_one_scale_factor():
    torch.manual_seed(0)
    pos = torch.randn(197, 768)
    out = interpolate_pos_embed(pos, (14, 14), (21, 28))[1:].reshape(21, 28, 768)
    grid = pos[1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(21, 28), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    assert (out - by_size).abs().max() > 0.1  # docs/method.md §1.6: size= gives different embeddings (0.45 there)
    # A source-coordinate check: with scale (hp+0.1)/14 the first output row samples src = 0.5*14/21.1 - 0.5.
    by_scale = F.interpolate(grid, scale_factor=(21.1 / 14, 28.1 / 14), mode="bicubic", align_corners=False,
                             recompute_scale_factor=False)[0].permute(1, 2, 0)
    torch.testing.assert_close(out, by_scale)


def test_pos_embed_same_count_other_shape_keeps_original():
    pos = torch.randn(197, 8)
    assert interpolate_pos_embed(pos, (14, 14), (7, 28)) is pos  # parity quirk: only the count is checked


def test_rescale_rule():
    assert rescale_size(500, 375, 336, 2048) == (448, 336)
    assert rescale_size(375, 500, 336, 2048) == (336, 448)
    assert rescale_size(1024, 2048, 560, 2048) == (560, 1120)
    assert rescale_size(100, 5000, 336, 2048) == (41, 2048)  # the long side caps the factor


def test_resize_and_normalise():
    img = (np.arange(500 * 375 * 3) % 251).astype(np.uint8).reshape(500, 375, 3)
    out = resize_for_config(img, SegmenterConfig())
    assert out.shape == (448, 336, 3) and out.dtype == np.uint8
    x = normalise(np.full((2, 2, 3), 122, np.uint8))
    assert x.shape == (3, 2, 2) and abs(float(x[0, 0, 0]) - (122 - 122.771) / 68.501) < 1e-6


@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 5, 3), np.uint8), "zero side"),
    (np.zeros((5, 5), np.uint8), "RGB uint8"),
    (np.zeros((5, 5, 3), np.float32), "RGB uint8"),
])
def test_bad_images_are_named(bad, match):
    with pytest.raises(ImageError, match=f"photo.jpg: .*{match}|photo.jpg: {match}"):
        resize_for_config(bad, SegmenterConfig(), name="photo.jpg")


@pytest.mark.parametrize("native", [False, pytest.param(True, marks=pytest.mark.skipif(
    cpu_kernel.find_compiler() is None, reason="no C++ compiler on this machine"))])
@pytest.mark.parametrize("src,dst", [((14, 14), (224, 224)), ((21, 31), (336, 500)), ((20, 30), (10, 7)),
                                     ((5, 5), (5, 5)), ((1, 1), (3, 4)), ((3, 9), (50, 141))])
def test_matrix_bilinear_equals_interpolate(src, dst, native):
    """Both resize paths (dense products; the CPU kernel's sparse rows) == F.interpolate, with and without
    an output buffer and a band of rows."""
    from pipeline.kernels.resize import resize_bilinear

    x = torch.randn(2, 7, *src)
    ref = F.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_bilinear(x, dst, native=native), ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(resize_bilinear(x, dst, rows=slice(1, 3), native=native), ref[..., 1:3, :],
                               atol=1e-6, rtol=1e-6)
    buf = torch.full((2, 7, *dst), float("nan"))
    assert resize_bilinear(x, dst, out=buf, native=native) is buf
    torch.testing.assert_close(buf, ref, atol=1e-6, rtol=1e-6)
    if native:
        with pytest.raises(ValueError, match="resize kernel"):
            cpu_kernel.resize(cpu_kernel.required_kernel(), x, bilinear_matrix(src[0] + 1, dst[0]),
                               bilinear_matrix(src[1], dst[1]))
