"""PAMR and the SFR matrix, tested without a model (docs/method.md §2.5 e–f, §2.6)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.kernels.pamr import pamr, pamr_affinity
from pipeline.method.sfr import patch_labels, row_smoothing_kernel, sfr_matrix, valid_paths


def _reference_pamr(image, mask, steps, dilations):
    """Straight from the spec: per-pixel loops over neighbours via explicit index shifts."""
    b, c, h, w = image.shape
    offs = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]

    def shifted(x, d, dy, dx):
        ys = (torch.arange(h) + dy * d).clamp(0, h - 1)
        xs = (torch.arange(w) + dx * d).clamp(0, w - 1)
        return x[:, :, ys][:, :, :, xs]

    window = torch.stack([shifted(image, d, dy, dx) for d in dilations for dy, dx in offs], 2)
    std = window.std(2, keepdim=True)
    neigh = [(d, dy, dx) for d in dilations for dy, dx in offs if (dy, dx) != (0, 0)]
    aff = torch.stack([-(image - shifted(image, d, dy, dx)).abs() for d, dy, dx in neigh], 2)
    wts = torch.softmax((aff / (1e-8 + 0.1 * std)).mean(1), dim=1)
    for _ in range(steps):
        mask = sum(wts[:, i:i + 1] * shifted(mask, d, dy, dx) for i, (d, dy, dx) in enumerate(neigh))
    return mask


@pytest.mark.parametrize("use_kernel", [False, None], ids=["torch", "default"])
def test_pamr_matches_spec_reference(use_kernel):
    torch.manual_seed(0)
    img, m = torch.randn(2, 3, 40, 52), torch.randn(2, 5, 40, 52)
    torch.testing.assert_close(pamr(img, m, 3, (1, 4), native=use_kernel), _reference_pamr(img, m, 3, (1, 4)),
                               atol=1e-5, rtol=1e-5)


def test_pamr_properties():
    torch.manual_seed(1)
    img = torch.randn(1, 3, 32, 32)
    w = pamr_affinity(img, (8, 16))
    assert w.shape == (1, 16, 32, 32)
    torch.testing.assert_close(w.sum(1), torch.ones(1, 32, 32))
    const = torch.full((1, 4, 32, 32), 2.5)
    torch.testing.assert_close(pamr(img, const, 10), const)  # a convex average keeps constants
    small = torch.randn(1, 4, 8, 8)
    assert pamr(img, small, 1).shape == (1, 4, 32, 32)  # resized to the guide first


def test_patch_labels_threshold_and_mode_ties():
    probs = torch.zeros(1, 3, 32, 16)
    probs[0, 2, :16] = 0.9  # top patch: query 2
    probs[0, 1, 16:] = 0.3  # bottom patch: query 1 but below temp_thd → label 0
    probs[0, 0, 16:] = 0.2
    out = patch_labels(probs, 0.5, (16, 16))
    assert out.tolist() == [[[2], [0]]]
    tie = torch.zeros(1, 3, 16, 16)
    tie[0, 2, :8] = 1.0
    tie[0, 1, 8:] = 1.0  # half 2, half 1: mode tie → smallest label
    assert patch_labels(tie, 0.0, (16, 16)).item() == 1


def test_path_check_is_partial():
    # 1x14 grid (D_max = 13): a blocking label 3 cells to the right of i
    labels = torch.zeros(1, 1, 14, dtype=torch.long)
    labels[0, 0, 3] = 1
    v = valid_paths(labels, (1, 14))[0]
    # pair (0, 5): probes round(5k/13), k = 0..5 → cells 0..2 only, so the blocker is not seen (quirk)
    assert v[0, 5]
    assert not v[0, 8]  # probes round(8k/13) reach cell 3
    assert not v[0, 13]  # full segment checked for the maximally distant pair
    # on a 14x14 grid a pair 9 columns apart probes only offsets 0..6 (docs/method.md §2.5 f2)
    grid = torch.zeros(1, 14, 14, dtype=torch.long)
    grid[0, 0, 8] = 5  # blocker at column 8, between i=(0,0) and j=(0,9), beyond offset 6
    assert valid_paths(grid, (14, 14))[0, 0, 9]
    grid[0, 0, 6] = 5
    assert not valid_paths(grid, (14, 14))[0, 0, 9]


def _reference_valid(labels, grid):
    """Per pair, straight from the spec: probes round(p_i(1 - t_k) + p_j t_k), t_k = k / D_max, k <= D_ij."""
    hp, wp = grid
    d_max = max(hp, wp) - 1
    t = torch.linspace(0, 1, d_max + 1)
    flat = labels.reshape(-1)
    n = hp * wp
    out = torch.ones(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            pi = torch.tensor([i // wp, i % wp])
            pj = torch.tensor([j // wp, j % wp])
            d = int((pi - pj).abs().max())
            for k in range(d + 1):
                r, c = (pi * (1 - t[k]) + pj * t[k]).round().long().tolist()
                if flat[r * wp + c] != flat[i]:
                    out[i, j] = False
                    break
    return out


@pytest.mark.parametrize("native", [False, None])  # the torch code, and the CPU kernel where it builds
@pytest.mark.parametrize("grid", [(5, 7), (7, 5), (1, 9), (6, 6)])
def test_path_check_matches_per_pair_reference(grid, native):
    torch.manual_seed(sum(grid))
    labels = torch.randint(0, 3, (1, *grid))
    assert torch.equal(valid_paths(labels, grid, native=native)[0], _reference_valid(labels[0], grid))


def test_smoothing_kernel():
    k = row_smoothing_kernel(196, 5.0)
    assert k.numel() == 31 and math.isclose(float(k.sum()), 1.0, rel_tol=1e-6)
    assert row_smoothing_kernel(20, 5.0).numel() == 21  # min(N, 31) made odd


@pytest.mark.parametrize("delete_same_entity", [True, False])
def test_sfr_matrix_properties(delete_same_entity):
    torch.manual_seed(2)
    labels = torch.randint(0, 4, (3, 14, 14))
    s = sfr_matrix(labels, 5.0, delete_same_entity)
    assert s.shape == (3, 197, 197)
    assert (s[:, 0] == 0).all() and (s[:, :, 0] == 0).all()
    assert (s >= 0).all()
    torch.testing.assert_close(s[:, 1:].sum(-1), torch.ones(3, 196), atol=1e-5, rtol=0)


def test_sfr_uniform_labels_and_decay():
    same = torch.zeros(1, 4, 4, dtype=torch.long)
    s = sfr_matrix(same, 5.0, True)
    # all pairs same label with valid paths: rows are the smoothed all-ones row, normalised
    ones = F.conv1d(torch.ones(1, 1, 16), row_smoothing_kernel(16, 5.0).view(1, 1, -1), padding=8)[0, 0]
    torch.testing.assert_close(s[0, 1, 1:], ones / ones.sum(), atol=1e-6, rtol=0)
    split = torch.zeros(1, 1, 4, dtype=torch.long)
    split[0, 0, 1] = 1  # 0 1 0 0: cells 0 and 2 share a label but the path crosses label 1
    with_del = sfr_matrix(split, 5.0, True)
    without = sfr_matrix(split, 5.0, False)
    assert not torch.allclose(with_del, without)

