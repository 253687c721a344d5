"""The fused CPU PAMR kernel (pipeline/kernels/csrc/pamr_cpu.cpp): equal to the torch path, built and cached per
machine, and a clear error or a logged fallback when it cannot be built."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import ConfigError
from pipeline.kernels import native
from pipeline.kernels.pamr import NEIGHBOUR_OFFSETS, pamr, pamr_affinity

needs_compiler = pytest.mark.skipif(native.find_compiler() is None, reason="no C++ compiler on this machine")
REPO = Path(__file__).resolve().parents[1]

# (B, Q, H, W, mask size, dilations, steps): crop sizes, a width that is no multiple of the vector width,
# a dilation larger than the image (replicate padding clamps every tap), other dilations, steps 0 and 1,
SLOW = pytest.mark.slow  # full-size cases: ~10x the work of the small ones; the unit tier keeps the small ones
CASES = [
    pytest.param(1, 7, 224, 224, (224, 224), (8, 16), 10, marks=SLOW),
    (2, 5, 37, 53, (19, 27), (8, 16), 10),
    (1, 1, 5, 9, (5, 9), (8, 16), 3),
    (1, 3, 40, 41, (40, 41), (1, 2, 3), 1),
    (1, 6, 17, 16, (9, 9), (8, 16), 0),
    pytest.param(3, 150, 48, 80, (3, 5), (8, 16), 10, marks=SLOW),
    # row classes (every vertical offset a multiple of G, see run_block): one row; H - 1 a multiple of 8
    # (rows 0 and H - 1 in one class); G = 4 and G = 16 with H - 1 in another class than row 0
    (1, 2, 1, 7, (1, 7), (8, 16), 10),
    (1, 3, 9, 40, (9, 40), (8, 16), 10),
    (1, 5, 41, 20, (41, 20), (4, 8), 10),
    (2, 2, 35, 19, (35, 19), (16,), 5),
]


@needs_compiler
@pytest.mark.parametrize("b,q,h,w,msize,dilations,steps", CASES)
def test_kernel_equals_torch(b, q, h, w, msize, dilations, steps):
    g = torch.Generator().manual_seed(h * w + q)
    img = torch.randn(b, 3, h, w, generator=g)
    mask = torch.randn(b, q, *msize, generator=g) * 3
    lib = native.required_kernel()
    ref_w = native.kernel_layout(lib, pamr_affinity(img, dilations))  # (B, H, WR / U, K, U)
    got_w = native.affinity(lib, img, dilations)
    assert got_w.shape == ref_w.shape and bool((native.unpack_layout(got_w)[..., w:] == 0).all())
    torch.testing.assert_close(native.unpack_layout(ref_w)[..., :w], pamr_affinity(img, dilations), atol=0, rtol=0)
    torch.testing.assert_close(got_w, ref_w, atol=2e-6, rtol=1e-5)
    ref = pamr(img, mask, steps, dilations, native=False)
    got = pamr(img, mask, steps, dilations, native=True)
    assert got.shape == ref.shape == (b, q, h, w)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # with the torch weights the iterations alone are the same sums in the same order: bit-equal
    dy, dx = native.taps(dilations, NEIGHBOUR_OFFSETS)
    resized = torch.nn.functional.interpolate(mask, size=(h, w), mode="bilinear", align_corners=True)
    direct = native.iterate(lib, resized, ref_w, steps, dy, dx)
    assert torch.equal(direct, pamr(img, mask, steps, dilations, native=False))


@needs_compiler
def test_kernel_keeps_constants_and_is_used_by_default(monkeypatch):
    monkeypatch.delenv(native.ENV_MODE, raising=False)
    assert native.kernel() is not None  # auto mode with a compiler: the kernel
    img = torch.randn(2, 3, 30, 70)
    const = torch.full((2, 5, 30, 70), -1.75)
    torch.testing.assert_close(pamr(img, const, 10), const)
    monkeypatch.setenv(native.ENV_MODE, "torch")
    assert native.kernel() is None


@needs_compiler
@pytest.mark.slow  # a whole voc21 frame with PAMR twice through the torch reference
def test_segmenter_same_labels_with_and_without_kernel(monkeypatch, tiny_arch, tiny_weights, tiny_vocab_file,
                                                       tiny_templates_file):
    from pipeline import ModelConfig, get_preset
    from pipeline.segmenter import Segmenter

    cfg = get_preset("voc21", vocabulary=tiny_vocab_file, templates=tiny_templates_file, temp_thd=0.1,
                     pamr_steps=10)  # the internal PAMR of SFR and a final PAMR
    seg = Segmenter.build(cfg, ModelConfig(arch=tiny_arch, weights=tiny_weights, device="cpu"))
    img = (np.random.RandomState(3).rand(200, 260, 3) * 255).astype(np.uint8)
    monkeypatch.setenv(native.ENV_MODE, "torch")
    ref = seg.segment([img], return_probs=True)[0]
    monkeypatch.setenv(native.ENV_MODE, "native")
    got = seg.segment([img], return_probs=True)[0]
    np.testing.assert_allclose(got.probs, ref.probs, atol=1e-5)
    assert (got.labels == ref.labels).mean() > 0.999


def test_bad_mode_is_a_config_error(monkeypatch):
    monkeypatch.setenv(native.ENV_MODE, "fast")
    with pytest.raises(ConfigError, match="RESLABEL_PAMR_KERNEL='fast' is not one of auto, native, torch"):
        native.kernel_mode()


@needs_compiler
@pytest.mark.slow  # compiles the kernel from scratch (the other tests reuse the cached build)
def test_build_is_cached_and_keyed(tmp_path):
    first = native.build_kernel(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build_kernel(tmp_path) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert list(tmp_path.glob("*.tmp.so")) == []  # no temporaries left behind
    alias = tmp_path / "cxx-alias"
    alias.symlink_to(native.find_compiler())
    other = native.build_kernel(tmp_path, compiler=str(alias))  # another compiler: another build
    assert other != first and other.exists()


def test_build_errors_name_the_compiler(tmp_path):
    with pytest.raises(native.KernelBuildError, match="could not run the C.. compiler '/nonexistent/c[+][+]'"):
        native.build_kernel(tmp_path, compiler="/nonexistent/c++")
    failing = tmp_path / "failing-cxx"
    failing.write_text("#!/bin/sh\necho 'fatal: no space for you' >&2\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(native.KernelBuildError, match=r"failing-cxx failed \(exit 3\)(.|\n)*no space for you"):
        native.build_kernel(tmp_path / "cache", compiler=str(failing))
    assert list((tmp_path / "cache").glob("*.so")) == []


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                          text=True, timeout=300)


def test_without_a_compiler_auto_falls_back_and_native_refuses(tmp_path):
    """A fresh process whose compiler is missing: auto logs one warning and gives the torch result; native
    raises with the reason."""
    code = """
        import logging, torch
        logging.basicConfig(level=logging.WARNING)
        from pipeline.kernels.pamr import pamr
        img, m = torch.randn(1, 3, 20, 24), torch.randn(1, 4, 20, 24)
        a = pamr(img, m, 5); b = pamr(img, m, 5)
        assert torch.equal(a, pamr(img, m, 5, native=False)) and torch.equal(a, b)
        print("OK")
    """
    env = {"CXX": str(tmp_path / "no-such-compiler"), native.ENV_CACHE: str(tmp_path / "cache")}
    proc = _run(code, {**env, native.ENV_MODE: "auto"})
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert proc.stderr.count("fused CPU kernel is unavailable") == 1 and "no-such-compiler" in proc.stderr
    proc = _run(code, {**env, native.ENV_MODE: "native"})
    assert proc.returncode != 0
    assert "KernelBuildError" in proc.stderr and "no-such-compiler" in proc.stderr


@needs_compiler
def test_kernel_runs_on_all_of_torchs_threads():
    """at::parallel_for is an OpenMP header template in torch's Linux wheels: a build without -fopenmp runs
    serially (found on this project: one thread while torch had two)."""
    lib = native.required_kernel()
    assert native.threads(lib) == torch.get_num_threads()


def _near_tie_patches(probs: torch.Tensor, temp_thd: float, patch, eps: float = 1e-5) -> torch.Tensor:
    """(B, hp, wp) bool: patches holding a pixel whose top-2 probabilities or top probability vs temp_thd
    are within eps (where float rounding order may decide the label)."""
    top2 = probs.topk(min(2, probs.shape[1]), dim=1).values
    tie = (top2[:, 0] - temp_thd).abs() < eps  # (B, H, W)
    if probs.shape[1] > 1:
        tie |= (top2[:, 0] - top2[:, 1]) < eps
    ph, pw = patch
    b, h, w = tie.shape
    tie = tie[:, : h // ph * ph, : w // pw * pw].reshape(b, h // ph, ph, w // pw, pw)
    return tie.any(dim=4).any(dim=2)


# (B, Q, H, W, logit scale, temp_thd): crop and whole-image grids, a width that is no multiple of the row
# unit, a side below one patch multiple (trailing pixels dropped), one query, a threshold no pixel reaches.
FUSED_CASES = [
    (1, 150, 224, 224, 40.0, 0.1),
    (2, 7, 224, 224, 40.0, 0.2),
    (1, 9, 336, 500, 40.0, 0.0),
    (3, 5, 48, 83, 40.0, 0.25),
    (1, 1, 32, 32, 40.0, 0.5),
    (1, 4, 64, 64, 1.0, 1.0),
]


@needs_compiler
@pytest.mark.parametrize("b,q,h,w,scale,thd", FUSED_CASES)
def test_fused_preliminary_labels_equal_torch_chain(b, q, h, w, scale, thd):
    """grid → upsampling → PAMR → softmax → temp_thd → patch mode in one kernel == the torch ops."""
    from pipeline.kernels.resize import bilinear_matrix, resize_bilinear
    from pipeline.method.sfr import patch_labels, preliminary_labels

    g = torch.Generator().manual_seed(q * h + w)
    img = torch.randn(b, 3, h, w, generator=g)
    grid = torch.randn(b, q, h // 16, w // 16, generator=g) * 0.2  # cosine-logit range
    probs = torch.softmax(pamr(img, resize_bilinear(grid, (h, w)), 10, native=False) * scale, dim=1)
    ref = patch_labels(probs, thd, (16, 16))
    lib = native.required_kernel()
    dy, dx = native.taps((8, 16), NEIGHBOUR_OFFSETS)
    labels, top, arg = native.patch_labels(lib, grid, bilinear_matrix(h // 16, h), bilinear_matrix(w // 16, w),
                                           native.affinity(lib, img, (8, 16)), 10, dy, dx, scale, thd, (16, 16),
                                           pixels=True)
    assert labels.shape == ref.shape == (b, h // 16, w // 16) and labels.dtype == torch.int64
    maxp, pred = probs.max(dim=1)
    torch.testing.assert_close(top, maxp, atol=2e-6, rtol=1e-5)
    margin = probs.topk(min(2, q), dim=1).values
    clear = (margin[:, 0] - margin[:, -1]) > 1e-5 if q > 1 else torch.ones_like(maxp, dtype=torch.bool)
    assert torch.equal(arg.long()[clear], pred[clear])
    differ = labels != ref
    assert not (differ & ~_near_tie_patches(probs, thd, (16, 16))).any()
    assert differ.float().mean() < 0.02
    if thd >= 1.0:
        assert (labels == 0).all()
    assert torch.equal(preliminary_labels(img, grid, 10, (8, 16), scale, thd, (16, 16), native=True), labels)
    assert torch.equal(preliminary_labels(img, grid, 10, (8, 16), scale, thd, (16, 16), native=False), ref)


@needs_compiler
def test_fused_labels_refuse_mismatched_shapes():
    from pipeline.kernels.resize import bilinear_matrix

    lib = native.required_kernel()
    img, grid = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 2, 2)
    dy, dx = native.taps((8, 16), NEIGHBOUR_OFFSETS)
    with pytest.raises(ValueError, match="PAMR labels kernel"):
        native.patch_labels(lib, grid, bilinear_matrix(2, 32), bilinear_matrix(3, 32),
                            native.affinity(lib, img, (8, 16)), 10, dy, dx, 40.0, 0.1, (16, 16))


@needs_compiler
@pytest.mark.parametrize("grid,classes", [((14, 14), 3), ((21, 31), 5), ((21, 31), 1), ((1, 9), 2), ((7, 5), 3),
                                          ((16, 16), 40)])
def test_valid_paths_kernel_equals_torch(grid, classes):
    from pipeline.method.sfr import sfr_matrix, valid_paths

    g = torch.Generator().manual_seed(grid[0] * grid[1] + classes)
    coarse = torch.randint(0, classes, (2, 1, (grid[0] + 2) // 3, (grid[1] + 2) // 3), generator=g).float()
    labels = torch.nn.functional.interpolate(coarse, size=grid, mode="nearest")[:, 0].long()  # blobs: long paths
    labels[1] = torch.randint(0, classes, grid, generator=g)  # and speckle
    assert torch.equal(valid_paths(labels, grid, native=True), valid_paths(labels, grid, native=False))
    assert torch.equal(sfr_matrix(labels, 5.0), sfr_matrix(labels, 5.0))


def _cpp_exports() -> dict:
    """name → (return type, [parameter types]) of every function in the kernel source's ``extern "C"`` block,
    parsed from the text (no compiler needed)."""
    import re

    src = (Path(native.__file__).parent / "csrc" / "pamr_cpu.cpp").read_text()
    block = src[src.index('extern "C" {'):src.index('}  // extern "C"')]
    out = {}
    for ret, name, params in re.findall(r"^(int64_t|int|void)\s+(reslabel_\w+)\(([^)]*)\)\s*\{", block, re.M):
        types = []
        for p in filter(None, (x.strip() for x in params.split(","))):
            decl = " ".join(p.split()[:-1]) + ("*" if "*" in p.split()[-1] else "")  # drop the parameter name
            types.append(decl.replace(" *", "*").replace("const ", ""))
        out[name] = (ret, types)
    return out


def test_ctypes_signatures_match_the_cpp_source():
    import ctypes

    c_to_ctypes = {"int64_t": ctypes.c_int64, "int": ctypes.c_int, "float": ctypes.c_float, "char*": ctypes.c_char_p}
    exports = _cpp_exports()
    assert set(exports) == set(native.SIGNATURES), "exported functions and Python declarations differ"
    for name, (ret, params) in exports.items():
        restype, argtypes = native.SIGNATURES[name]
        assert restype is c_to_ctypes[ret], (name, ret, restype)
        expected = [ctypes.c_void_p if p.endswith("*") and p != "char*" else c_to_ctypes[p] for p in params]
        assert list(argtypes) == expected, (name, params, argtypes)
    assert len(exports["reslabel_pamr_labels_f32"][1]) == 23  # the parser sees multi-line parameter lists
