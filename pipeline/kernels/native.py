"""The fused CPU PAMR kernel (``csrc/pamr_cpu.cpp``): built at first use, cached, loaded with ctypes.

PAMR is the largest cost of ResCLIP after the trunk once the vocabulary is large (10 iterations × 16 taps
over every query channel at crop resolution). The torch implementation in :mod:`pipeline.kernels.pamr` makes 17
passes over memory per iteration; the kernel makes one per block of four channels and reuses each weight
load for those four channels. Given the same neighbour weights it computes the same sums in the same order
(tested bit-equal); its own weights (:func:`affinity`) differ from the torch ones by a few float32 ulps, so
results agree to ~1e-6. :func:`patch_labels` runs ResCLIP's whole preliminary-label chain in it (grid
logits → upsampling → PAMR → online softmax → temp_thd → patch mode) without materialising (Q, H, W).

Selection, per process, by the environment variable ``RESLABEL_PAMR_KERNEL``:

* ``auto`` (default): the kernel for float32 CPU tensors when it can be built, else torch (one warning);
* ``native``: the kernel, and an error if it cannot be built;
* ``torch``: never the kernel.

Building needs a C++17 compiler (``$CXX``, else ``c++``/``g++``/``clang++`` on PATH) and torch's headers
(shipped in the torch wheel); it takes a few seconds. With an OpenMP build of torch (the Linux wheels)
it is compiled with ``-fopenmp`` and linked to torch's own ``libgomp``: torch's ``at::parallel_for`` is a
header template around ``#pragma omp parallel`` there, so without the flag the kernel would run on one
thread (:func:`threads` reports what it gets). The shared library goes to
``$RESLABEL_KERNEL_CACHE`` (default ``~/.cache/reslabel/kernels``) under a name keyed by the source, the
compiler, torch's version and the CPU's instruction-set flags (it is compiled with ``-march=native``), so
nodes of a mixed cluster sharing a home directory never load each other's build.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

ENV_MODE = "RESLABEL_PAMR_KERNEL"
ENV_CACHE = "RESLABEL_KERNEL_CACHE"
MODES = ("auto", "native", "torch")
SOURCE = Path(__file__).with_name("csrc") / "pamr_cpu.cpp"

_lock = threading.Lock()
_loaded: Optional[ctypes.CDLL] = None
_failure: Optional[str] = None  # why the kernel is unavailable in this process (set once)


class KernelBuildError(RuntimeError):
    """The kernel could not be compiled or loaded; the message names the compiler and its output."""


def kernel_mode() -> str:
    """The validated value of ``RESLABEL_PAMR_KERNEL`` (default ``auto``); ConfigError otherwise."""
    mode = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"{ENV_MODE}={os.environ[ENV_MODE]!r} is not one of {', '.join(MODES)}")
    return mode


def find_compiler() -> Optional[str]:
    """``$CXX`` if set (a command, e.g. ``g++-13`` or ``ccache g++``, used as given even when missing: the
    build error then names it), else the first of c++, g++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def torch_uses_openmp() -> bool:
    """Whether this torch's ATen parallel backend is OpenMP (``AT_PARALLEL_OPENMP`` in ATen/Config.h)."""
    config = Path(torch.__file__).parent / "include" / "ATen" / "Config.h"
    try:
        return "#define AT_PARALLEL_OPENMP 1" in config.read_text()
    except OSError:
        return "OpenMP" in torch.__config__.parallel_info()


def _command(compiler: str, out: Path) -> list:
    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    omp = ["-fopenmp"] if torch_uses_openmp() else []  # links -lgomp: torch/lib's copy comes first (-L)
    return [*shlex.split(compiler), *omp, "-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared",
            "-fPIC",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{torch_dir / 'include'}", str(SOURCE), "-o", str(out),
            f"-L{torch_dir / 'lib'}", "-Wl,--no-as-needed", "-ltorch_cpu", "-lc10",
            f"-Wl,-rpath,{torch_dir / 'lib'}"]


def build_kernel(cache_dir: Optional[Path] = None, compiler: Optional[str] = None) -> Path:
    """Compile the kernel (or find the cached build) and return the shared library's path.

    Concurrent builders (several Ray actors on one node) each write their own temporary file and rename it
    into place, so a reader only ever sees a complete library.

    Raises:
        KernelBuildError: no compiler, or the compiler failed (its output is in the message).
    """
    compiler = compiler or find_compiler()
    if not compiler:
        raise KernelBuildError("no C++ compiler found ($CXX unset and none of c++, g++, clang++ on PATH)")
    cache_dir = Path(cache_dir or os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "reslabel" / "kernels")
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), " ".join(_command(compiler, Path("x"))).encode(),
                 torch.__version__.encode(), platform.machine().encode(), _cpu_flags().encode()):
        key.update(part + b"\0")
    target = cache_dir / f"pamr_cpu-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=cache_dir)
    os.close(fd)
    try:
        try:
            proc = subprocess.run(_command(compiler, Path(tmp)), capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KernelBuildError(f"could not run the C++ compiler {compiler!r}: {exc}") from exc
        if proc.returncode != 0:
            raise KernelBuildError(f"{compiler} failed (exit {proc.returncode}) building {SOURCE.name}:\n"
                                   f"{(proc.stderr or proc.stdout)[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_I64, _PTR, _ERR = ctypes.c_int64, ctypes.c_void_p, ctypes.c_char_p
# The C signatures of the kernel's exported functions (csrc/pamr_cpu.cpp, ``extern "C"``): name → (return
# type, argument types). ctypes cannot check them against the library, so tests/test_pamr_native.py parses the
# .cpp and pins this table to it (a drift would be silent undefined behaviour).
SIGNATURES: Dict[str, Tuple[type, List[type]]] = {
    "reslabel_pamr_vector_width": (_I64, []),
    "reslabel_pamr_threads": (_I64, []),
    "reslabel_pamr_f32": (ctypes.c_int, [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _ERR,
                                         _I64]),
    "reslabel_pamr_labels_f32": (ctypes.c_int, [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _I64, _PTR, _I64,
                                                _PTR, _PTR, _I64, ctypes.c_float, ctypes.c_float, _I64, _I64, _PTR,
                                                _PTR, _PTR, _ERR, _I64]),
    "reslabel_sfr_valid_paths": (ctypes.c_int, [_PTR, _I64, _I64, _I64, _PTR, _PTR, _I64, _PTR, _ERR, _I64]),
    "reslabel_resize_f32": (ctypes.c_int, [_PTR, _I64, _I64, _I64, _PTR, _I64, _PTR, _I64, _PTR, _ERR, _I64]),
    "reslabel_pamr_weights_f32": (ctypes.c_int, [_PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _ERR, _I64]),
}


def load_kernel(path: Path) -> ctypes.CDLL:
    """Load a built kernel and declare its C signatures (``SIGNATURES``)."""
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, list(argtypes)
    return lib


def kernel() -> Optional[ctypes.CDLL]:
    """The loaded kernel, or None where the mode is ``torch`` or (mode ``auto``) it cannot be built.

    Raises:
        KernelBuildError: mode ``native`` and the kernel cannot be built.
        ConfigError: an unknown ``RESLABEL_PAMR_KERNEL`` value.
    """
    mode = kernel_mode()
    return None if mode == "torch" else _get(mode)


def for_device(device: torch.device, native: Optional[bool]) -> Optional[ctypes.CDLL]:
    """The kernel to use for tensors on ``device``, or None for the torch code.

    ``native``: True requires the kernel (KernelBuildError if it cannot be built), False never uses it, None
    follows ``RESLABEL_PAMR_KERNEL`` (default: the kernel when it is available). Only CPU tensors can use it.
    """
    if device.type != "cpu" or native is False:
        return None
    return kernel() if native is None else required_kernel()


def required_kernel() -> ctypes.CDLL:
    """The loaded kernel whatever the environment says; KernelBuildError if it cannot be built."""
    lib = _get("native")
    assert lib is not None
    return lib


def _get(mode: str) -> Optional[ctypes.CDLL]:
    global _loaded, _failure
    with _lock:
        if _loaded is None and _failure is None:
            try:
                _loaded = load_kernel(build_kernel())
            except (KernelBuildError, OSError) as exc:
                _failure = str(exc)
                if mode == "auto":
                    log.warning("PAMR: the fused CPU kernel is unavailable, using the slower torch path "
                                "(set %s=torch to silence): %s", ENV_MODE, _failure)
        if _loaded is None and mode == "native":
            raise KernelBuildError(f"the fused PAMR kernel is required ({ENV_MODE}=native or native=True) "
                                   f"but unavailable: {_failure}")
        return _loaded


def taps(dilations: Sequence[int], offsets: Sequence[Tuple[int, int]]) -> Tuple[list, list]:
    """(dy, dx) per tap, dilation-major and offset-minor: the order the taps are summed in."""
    return [dy * d for d in dilations for dy, _ in offsets], [dx * d for d in dilations for _, dx in offsets]


def _i64(values: Sequence[int]) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def _check(rc: int, err: ctypes.Array, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"PAMR kernel failed on {what}: {err.value.decode(errors='replace')}")


def threads(lib: ctypes.CDLL) -> int:
    """How many threads of torch's intra-op pool the kernel's parallel loops actually use (at most
    ``torch.get_num_threads()``; 1 would mean a build that cannot run in parallel)."""
    return int(lib.reslabel_pamr_threads())


def _row_width(lib: ctypes.CDLL, w: int) -> int:
    """WR: the width of the kernel's weight rows, ``w`` rounded up to its row unit (a vector multiple)."""
    vw = lib.reslabel_pamr_vector_width()
    return -(-w // vw) * vw


def layout_shape(lib: ctypes.CDLL, b: int, h: int, k: int, w: int) -> Tuple[int, int, int, int, int]:
    """Shape of the kernel's weight layout for B images of H x W and K taps: (B, H, WR // U, K, U), U the
    kernel's row unit: per image row, chunks of U columns, each holding the K taps' U weights one after
    another, so the kernel reads one sequential stream per row instead of K (measured 12–40 % faster)."""
    unit = lib.reslabel_pamr_vector_width()
    return (b, h, _row_width(lib, w) // unit, k, unit)


def kernel_layout(lib: ctypes.CDLL, weights: torch.Tensor) -> torch.Tensor:
    """Neighbour weights (B, K, H, W) → the kernel's layout (:func:`layout_shape`), zero past W."""
    b, k, h, w = weights.shape
    shape = layout_shape(lib, b, h, k, w)
    padded = torch.zeros(b, k, h, shape[2] * shape[4], dtype=torch.float32)
    padded[..., :w] = weights.float()
    return padded.view(b, k, h, shape[2], shape[4]).permute(0, 2, 3, 1, 4).contiguous()


def unpack_layout(weights: torch.Tensor) -> torch.Tensor:
    """The kernel's layout (B, H, C, K, U) → (B, K, H, C·U): the inverse of :func:`kernel_layout` (the
    columns past W included)."""
    b, h, c, k, u = weights.shape
    return weights.permute(0, 3, 1, 2, 4).reshape(b, k, h, c * u)


def affinity(lib: ctypes.CDLL, image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Neighbour weights of guide ``image`` (B, C, H, W) in the kernel's layout (:func:`layout_shape`),
    K = 8 per dilation in the order of :func:`taps` with the 8 offsets in raster order; the same quantity as
    :func:`pipeline.kernels.pamr.pamr_affinity` (equal to a few float32 ulps)."""
    b, c, h, w = image.shape
    out = torch.empty(layout_shape(lib, b, h, 8 * len(dilations), w), dtype=torch.float32)
    src = image.float().contiguous()
    err = ctypes.create_string_buffer(512)
    rc = lib.reslabel_pamr_weights_f32(src.data_ptr(), out.data_ptr(), b, c, h, w, _row_width(lib, w),
                                       len(dilations), _i64(dilations), err, len(err))
    _check(rc, err, f"image {tuple(image.shape)}")
    return out


def iterate(lib: ctypes.CDLL, mask: torch.Tensor, weights: torch.Tensor, steps: int,
            dy: Sequence[int], dx: Sequence[int]) -> torch.Tensor:
    """``steps`` PAMR iterations of mask (B, Q, H, W) float32 CPU with neighbour weights in the kernel's
    layout (:func:`layout_shape`), K = len(dy), tap k reading M(y + dy[k], x + dx[k]) (replicate padding).
    Returns (B, Q, H, W)."""
    b, q, h, w = mask.shape
    k = len(dy)
    if tuple(weights.shape) != layout_shape(lib, b, h, k, w) or len(dx) != k or not weights.is_contiguous():
        raise ValueError(f"PAMR kernel: mask {tuple(mask.shape)}, weights {tuple(weights.shape)}, {k} taps")
    src = mask.float().contiguous()
    out = torch.empty_like(src)
    err = ctypes.create_string_buffer(512)
    rc = lib.reslabel_pamr_f32(src.data_ptr(), weights.data_ptr(), out.data_ptr(), b, q, h, w, k, _i64(dy),
                               _i64(dx), steps, err, len(err))
    _check(rc, err, f"mask {tuple(mask.shape)}")
    return out


def patch_labels(lib: ctypes.CDLL, grid: torch.Tensor, ry: torch.Tensor, rx: torch.Tensor, weights: torch.Tensor,
                 steps: int, dy: Sequence[int], dx: Sequence[int], scale: float, temp_thd: float,
                 patch: Tuple[int, int], pixels: bool = False):
    """ResCLIP's preliminary patch labels in one pass per channel block (docs/method.md §2.5 c–e).

    Args:
        grid: (B, Q, gh, gw) float32 cosine logits at the patch grid.
        ry, rx: (H, gh) and (W, gw) bilinear resize matrices (:func:`pipeline.kernels.resize.bilinear_matrix`).
        weights: neighbour weights from :func:`affinity` of the (B, 3, H, W) guide (kernel layout).
        steps, dy, dx: PAMR iterations and taps (:func:`taps`).
        scale: the softmax's logit scale; temp_thd: top probabilities below it give label 0.
        patch: (ph, pw) patch size in pixels.
        pixels: also return the per-pixel top probability (B, H, W) float32 and query (B, H, W) int32.
    Returns: labels (B, H // ph, W // pw) int64: the most frequent pixel label of each patch, ties to the
        smallest (the CPU rule of ``torch.mode``); with ``pixels``, (labels, top probability, query).
    """
    b, q, gh, gw = grid.shape
    h, w = ry.shape[0], rx.shape[0]
    k = len(dy)
    if ry.shape != (h, gh) or rx.shape != (w, gw) or tuple(weights.shape) != layout_shape(lib, b, h, k, w) \
            or len(dx) != k or not weights.is_contiguous():
        raise ValueError(f"PAMR labels kernel: grid {tuple(grid.shape)}, resize {tuple(ry.shape)}/{tuple(rx.shape)}, "
                         f"weights {tuple(weights.shape)}, {k} taps")
    ph, pw = patch
    src = grid.float().contiguous()
    ry, rx = ry.float().contiguous(), rx.float().contiguous()
    labels = torch.empty(b, h // ph, w // pw, dtype=torch.int64)
    top = torch.empty(b, h, w, dtype=torch.float32) if pixels else None
    arg = torch.empty(b, h, w, dtype=torch.int32) if pixels else None
    err = ctypes.create_string_buffer(512)
    rc = lib.reslabel_pamr_labels_f32(src.data_ptr(), b, q, gh, gw, ry.data_ptr(), rx.data_ptr(), h, w,
                                      weights.data_ptr(), k, _i64(dy), _i64(dx), steps, scale, temp_thd, ph, pw,
                                      labels.data_ptr(), top.data_ptr() if pixels else None,
                                      arg.data_ptr() if pixels else None, err, len(err))
    _check(rc, err, f"grid {tuple(grid.shape)} → {h}x{w}")
    return (labels, top, arg) if pixels else labels


def resize(lib: ctypes.CDLL, x: torch.Tensor, ry: torch.Tensor, rx: torch.Tensor,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ry · x · rxᵀ for x (..., h, w) float32 on CPU with resize matrices ry (H, h) and rx (W, w), only their
    nonzeros (:func:`pipeline.kernels.resize.resize_bilinear`'s CPU path). ``out``: a contiguous (..., H, W) float32
    tensor to write into. Returns (..., H, W)."""
    h, w = x.shape[-2:]
    big_h, big_w = ry.shape[0], rx.shape[0]
    shape = (*x.shape[:-2], big_h, big_w)
    if ry.shape != (big_h, h) or rx.shape != (big_w, w) or (out is not None and (
            tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous())):
        raise ValueError(f"resize kernel: x {tuple(x.shape)}, resize {tuple(ry.shape)}/{tuple(rx.shape)}, "
                         f"out {None if out is None else tuple(out.shape)}")
    src = x.float().contiguous()
    ry, rx = ry.float().contiguous(), rx.float().contiguous()
    out = torch.empty(shape, dtype=torch.float32) if out is None else out
    n = src.numel() // max(h * w, 1)
    if n == 0 or out.numel() == 0:
        return out
    err = ctypes.create_string_buffer(512)
    rc = lib.reslabel_resize_f32(src.data_ptr(), n, h, w, ry.data_ptr(), big_h, rx.data_ptr(), big_w,
                                 out.data_ptr(), err, len(err))
    _check(rc, err, f"x {tuple(x.shape)} → {big_h}x{big_w}")
    return out


def valid_paths(lib: ctypes.CDLL, labels: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """SFR's path validity (B, N, N) bool for patch labels (B, hp, wp), with the probe tables ``rows``
    (hp, hp, K) and ``cols`` (wp, wp, K) of :func:`pipeline.method.sfr._axis_probes`; each pair's probes are
    walked until the first foreign one."""
    b, hp, wp = labels.shape
    k = rows.shape[-1]
    if tuple(rows.shape) != (hp, hp, k) or tuple(cols.shape) != (wp, wp, k):
        raise ValueError(f"SFR paths kernel: labels {tuple(labels.shape)}, "
                         f"probes {tuple(rows.shape)}/{tuple(cols.shape)}")
    flat = labels.reshape(b, hp * wp).to(torch.int64).contiguous()
    rows, cols = rows.to(torch.int64).contiguous(), cols.to(torch.int64).contiguous()
    out = torch.empty(b, hp * wp, hp * wp, dtype=torch.bool)
    err = ctypes.create_string_buffer(512)
    rc = lib.reslabel_sfr_valid_paths(flat.data_ptr(), b, hp, wp, rows.data_ptr(), cols.data_ptr(), k,
                                      out.data_ptr(), err, len(err))
    _check(rc, err, f"labels {tuple(labels.shape)}")
    return out
