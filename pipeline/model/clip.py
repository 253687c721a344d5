"""Build an open_clip CLIP with its weights, and expose the ViT parts the dense forward reads.

This is the only module that touches open_clip internals. ``VISION_ATTRS``/``BLOCK_ATTRS``/``ATTN_ATTRS``
list every attribute read; ``tests/test_models.py`` pins them on the installed open_clip. ``TEXT_ATTRS`` lists
those of the text tower read by ``encode_text`` (causal prefix encoding); ``tests/test_text_prefix.py`` pins them
and checks the tower is causal and reads the end-of-text token.

Weights never run pickled code: safetensors, ``torch.load(weights_only=True)``, or an OpenAI TorchScript
archive whose tensors are read by a restricted unpickler (its code is never loaded).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import platform
import zipfile
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from pipeline.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

VISION_ATTRS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj",
                "patch_size", "grid_size")
BLOCK_ATTRS = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
ATTN_ATTRS = ("in_proj_weight", "in_proj_bias", "out_proj", "num_heads", "batch_first")

TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DROP_KEYS = ("input_resolution", "context_length", "vocab_size")  # OpenAI JIT archives carry these ints


class WeightsError(ValueError):
    """Weights could not be read or do not fit the architecture; the message names the file."""


@dataclasses.dataclass
class Block:
    """One pre-LN transformer block: x += ls_1(attn(ln_1 x)); x += ls_2(mlp(ln_2 x))."""

    module: nn.Module  # the original block, for its plain (fast) forward
    ln_1: nn.Module
    in_proj_weight: torch.Tensor  # (3D, D)
    in_proj_bias: torch.Tensor  # (3D,)
    out_proj: nn.Linear
    num_heads: int
    ls_1: nn.Module
    ln_2: nn.Module
    mlp: nn.Module
    ls_2: nn.Module


@dataclasses.dataclass
class VisionParts:
    """The ViT image tower as plain parts (open_clip layout, batch-first tokens (B, N+1, D))."""

    conv1: nn.Conv2d
    class_embedding: torch.Tensor  # (D,)
    positional_embedding: torch.Tensor  # (1 + gh*gw, D)
    grid_size: Tuple[int, int]  # (gh, gw) of the pretraining resolution
    patch_size: Tuple[int, int]
    ln_pre: nn.Module
    blocks: List[Block]
    ln_post: nn.Module
    proj: torch.Tensor  # (D, E)


def vision_parts(model: nn.Module) -> VisionParts:
    """Read the ViT parts of an open_clip CLIP. Raises ``ConfigError`` for non-ViT towers."""
    v = model.visual
    missing = [a for a in VISION_ATTRS if not hasattr(v, a)]
    if missing:
        raise ConfigError(f"{type(v).__name__} is not an open_clip VisionTransformer (lacks {missing}); "
                          "only ViT archs work")
    if getattr(v, "attn_pool", None) is not None or v.proj is None:
        raise ConfigError("ViT towers with attentional pooling or no projection are not supported")
    blocks = []
    for b in v.transformer.resblocks:
        if not isinstance(b.attn, nn.MultiheadAttention) or not b.attn.batch_first:
            raise ConfigError(f"unsupported attention module {type(b.attn).__name__} (open_clip version?)")
        blocks.append(Block(b, b.ln_1, b.attn.in_proj_weight, b.attn.in_proj_bias, b.attn.out_proj,
                            b.attn.num_heads, b.ls_1, b.ln_2, b.mlp, b.ls_2))
    return VisionParts(v.conv1, v.class_embedding, v.positional_embedding, tuple(v.grid_size),
                       tuple(v.patch_size), v.ln_pre, blocks, v.ln_post, v.proj)


def resolve_arch(arch: str, arch_json: Optional[str] = None) -> str:
    """An open_clip model name, or a path to an open_clip-style JSON config (registered under its stem).

    With ``arch_json`` (the config's text, shipped from the driver by ``inline_arch``) the file at ``arch``
    is not read: the text is written once per node under the reslabel cache, keyed by its hash, and
    registered from there, so a config that exists only where the job was started works on every node.
    """
    import open_clip

    if arch.endswith(".json"):
        path = pathlib.Path(arch)
        if arch_json is not None:
            path = _materialise_arch(path.stem, arch_json)
        elif not path.is_file():
            raise ConfigError(f"architecture config {arch}: file not found")
        open_clip.add_model_config(path)
        return path.stem
    if arch not in open_clip.list_models():
        vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
        raise ConfigError(f"unknown architecture {arch!r}; valid ViT names: {', '.join(vits)} (or a .json config path)")
    return arch


def _materialise_arch(stem: str, text: str) -> pathlib.Path:
    """``<cache>/arch/<sha16>/<stem>.json`` holding ``text`` (written atomically once)."""
    dest = _cache_dir() / "arch" / hashlib.sha256(text.encode()).hexdigest()[:16] / f"{stem}.json"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)
    return dest


def inline_arch(mc: ModelConfig) -> ModelConfig:
    """``mc`` with the text of its JSON architecture config attached (read here, once), so that tasks on
    other nodes need not see the file. Names and already-inlined configs are returned unchanged."""
    if not mc.arch.endswith(".json") or mc.arch_json is not None:
        return mc
    from pipeline.model.vocabulary import read_text_uri

    text = read_text_uri(mc.arch)
    try:
        json.loads(text)
    except ValueError as e:
        raise ConfigError(f"architecture config {mc.arch}: not valid JSON ({e})") from e
    return dataclasses.replace(mc, arch_json=text)


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("RESLABEL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "reslabel"))
    return pathlib.Path(root)


def check_weights(uri: str) -> Optional[dict]:
    """Raise ``WeightsError`` unless ``uri`` names a regular local file or an existing object (nothing is read);
    returns the object's info (size, tag) for a remote URI, None for a local path."""
    from pipeline.io import uri as uris
    protocol, path = uris.split(uri)
    if protocol == uris.LOCAL:
        not_regular = uris.non_regular_kind(path)
        if not_regular is not None:
            raise WeightsError(f"weights {uri}: not a regular file: {not_regular}")
        if not os.path.isfile(path):
            raise WeightsError(f"weights {uri}: file not found")
        return None
    info = uris.info(uri)
    if info is None or info["type"] != "file":
        raise WeightsError(f"weights {uri}: object not found")
    return info


def fetch_weights(uri: str) -> str:
    """Local path for a weights path or s3:// URI (names taken literally, ``pipeline.io.uri``); remote files are
    copied once per node (atomic rename). A local path must be a regular file."""
    import shutil

    from pipeline.io import uri as uris
    info = check_weights(uri)
    protocol, path = uris.split(uri)
    if info is None:
        return path
    tag = hashlib.sha256(f"{uri}|{info['size']}|{info['tag']}".encode()).hexdigest()[:16]
    dest = _cache_dir() / "weights" / f"{tag}-{os.path.basename(path)}"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + f".tmp{os.getpid()}")
        with uris.open_read(uri) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 23)
        os.replace(tmp, dest)
    return str(dest)


def weights_digest(path: str) -> str:
    """sha256 of the local file's bytes (hex), cached in a sidecar keyed by path, size and mtime."""
    st = os.stat(path)
    return _cached_digest(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}", lambda: open(path, "rb"))


def _cached_digest(key: str, opener) -> str:
    """sha256 (hex) of the stream ``opener()`` returns, remembered under ``key`` (which must change whenever the
    bytes do: size + mtime for a file, size + ETag for an object)."""
    side = _cache_dir() / "digests" / hashlib.sha256(key.encode()).hexdigest()
    if side.exists():
        return side.read_text().strip()
    h = hashlib.sha256()
    with opener() as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    side.parent.mkdir(parents=True, exist_ok=True)
    tmp = side.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(h.hexdigest())
    os.replace(tmp, side)
    return h.hexdigest()


def weights_identity(mc: ModelConfig) -> str:
    """The ``weights_digest`` provenance string ``build_model(mc)`` reports, without building the model:
    ``open_clip:NAME:TAG``, ``random:NAME:seedN`` or ``sha256:HEX`` of the weights file's bytes. A remote file is
    hashed as it streams (nothing is stored but the digest), once per (URI, size, ETag) on this machine; a node
    that later fetches the same object finds the same digest (the bytes are the same). The labeling job's driver
    uses this to compute the run's hashes, and so to find that nothing is left to label, before any model
    loads."""
    from pipeline.io import uri as uris

    mc.validate()
    name = resolve_arch(mc.arch, mc.arch_json)
    if mc.pretrained is not None:
        return f"open_clip:{name}:{mc.pretrained}"
    if mc.weights is None:
        return f"random:{name}:seed{mc.seed}"
    info = check_weights(mc.weights)
    if info is None:  # a local file
        return "sha256:" + weights_digest(uris.split(mc.weights)[1])
    key = f"{mc.weights}|{info['size']}|{info['tag']}"
    return "sha256:" + _cached_digest(key, lambda: uris.open_read(mc.weights))


def _is_torchscript(path: str, source: str) -> bool:
    """Whether ``path`` is a zip holding TorchScript code; ``WeightsError`` if its zip directory is corrupt."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())
    except zipfile.BadZipFile as e:
        raise WeightsError(f"weights {source}: corrupt zip archive ({e})") from e


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}


class _ScriptObject:
    """Stand-in for a TorchScript class instance: keeps the pickled attribute dict, runs nothing."""

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(source: str, flat: torch.Tensor, offset: int, size, stride, *_) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for the restricted unpickler: a copy of the ``size``/``stride``
    view of ``flat`` (elements) from ``offset``, refused with ``WeightsError`` if it reaches past ``flat``."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or offset < 0 or min((*size, *stride), default=0) < 0:
        raise WeightsError(f"weights {source}: malformed tensor record (size {list(size)}, stride {list(stride)}, "
                           f"offset {offset})")
    end = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1 if all(size) else 0
    if end > flat.numel():
        raise WeightsError(f"weights {source}: a tensor of size {list(size)} (stride {list(stride)}, offset {offset}) "
                           f"needs {end} elements, its storage holds {flat.numel()}")
    return torch.as_strided(flat, size, stride, offset).clone()


def torchscript_state_dict(path: str, source: str) -> Dict[str, torch.Tensor]:
    """Tensors of a TorchScript archive (e.g. OpenAI's CLIP ``.pt``) read with a restricted unpickler.

    Only tensor rebuilding, storages and OrderedDict are resolved; TorchScript classes become inert
    attribute holders and the archive's code is never loaded or run. Names follow ``state_dict()``.
    A malformed archive (no ``data.pkl``, a storage member missing or not whole elements, a tensor reaching
    past its storage, a corrupt zip or pickle) raises ``WeightsError`` naming ``source`` and the problem.
    """
    try:
        with zipfile.ZipFile(path) as z:
            root = _unpickle_archive(z, source)
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt zip member or pickle: re-raised with the file named
        raise WeightsError(f"weights {source}: unreadable TorchScript archive ({type(e).__name__}: {e})") from e
    out: Dict[str, torch.Tensor] = {}

    def walk(obj, prefix_: str) -> None:
        for k, v in getattr(obj, "state", {}).items():
            if isinstance(v, torch.Tensor):
                out[prefix_ + k] = v
            elif isinstance(v, _ScriptObject):
                walk(v, f"{prefix_}{k}.")

    walk(root, "")
    return out


def _unpickle_archive(z: zipfile.ZipFile, source: str):
    """The root object of ``<dir>/data.pkl`` in ``z``, storages read from ``<dir>/data/<key>``."""
    import functools
    import pickle

    names = z.namelist()
    members = set(names)
    pkl = next((n for n in names if n.endswith("data.pkl") and n.count("/") == 1), None)
    if pkl is None:
        raise WeightsError(f"weights {source}: TorchScript archive has no <dir>/data.pkl")
    prefix = pkl[: -len("data.pkl")]

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module.startswith("__torch__"):
                return type(name, (_ScriptObject,), {})
            if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
                return functools.partial(_rebuild_tensor, source)
            if module == "collections" and name == "OrderedDict":
                import collections

                return collections.OrderedDict
            if module == "torch" and name in _STORAGE_DTYPES:
                return name
            raise WeightsError(f"weights {source}: refused — TorchScript archive references {module}.{name}")

        def persistent_load(self, pid):
            kind, storage, key, _location, numel = pid
            if kind != "storage" or storage not in _STORAGE_DTYPES:
                raise WeightsError(f"weights {source}: refused — unknown storage {pid!r}")
            member = f"{prefix}data/{key}"
            if member not in members:
                raise WeightsError(f"weights {source}: TorchScript archive lacks {member}, which {pkl} refers to")
            data = bytearray(z.read(member))
            dtype = _STORAGE_DTYPES[storage]
            if len(data) % dtype.itemsize:
                raise WeightsError(f"weights {source}: {member} holds {len(data)} bytes, not a whole number of "
                                   f"{dtype} elements")
            return torch.frombuffer(data, dtype=dtype)[:numel] if data else torch.empty(0)

    with z.open(pkl) as f:
        return _Unpickler(f).load()


def load_state_dict(path: str, source: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a state dict without running pickled code. ``source`` names the file in errors."""
    source = source or path
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            sd = load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise WeightsError(f"weights {source}: not a readable safetensors file ({e})") from e
    elif _is_torchscript(path, source):
        sd = torchscript_state_dict(path, source)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise WeightsError(
                f"weights {source}: refused — not a safetensors file, a TorchScript archive, or a tensor-only "
                f"torch checkpoint loadable with weights_only=True ({type(e).__name__}: {str(e)[:200]})"
            ) from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # open_clip training checkpoint
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"weights {source}: not a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in _DROP_KEYS}


def check_state_dict(model: nn.Module, sd: Dict[str, torch.Tensor], source: str) -> None:
    """Raise ``WeightsError`` naming ``source`` and the first missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    for k, t in own.items():
        if k not in sd:
            raise WeightsError(f"weights {source}: missing key {k!r} (expected shape {tuple(t.shape)})")
        if tuple(sd[k].shape) != tuple(t.shape):
            raise WeightsError(f"weights {source}: key {k!r} has shape {tuple(sd[k].shape)}, "
                               f"the architecture expects {tuple(t.shape)}")
    extra = [k for k in sd if k not in own]
    if extra:
        raise WeightsError(f"weights {source}: unexpected key {extra[0]!r} "
                           f"({len(extra)} unexpected in all; wrong --model?)")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _cpu_flags() -> set:
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def slow_cpu_dtype(device: torch.device, dtype: str) -> Optional[str]:
    """Why half-precision weights will run slowly on this CPU, or None (GPU, fp32/tf32, or native support).

    bf16 matrix products are fast on x86 CPUs only with AVX512-BF16 or AMX, fp16 ones only with AVX512-FP16 or
    AMX-FP16; elsewhere torch falls back to a slow path. Measured on an AVX2-only AMD EPYC (2 cores): bf16 2048³
    matmul 0.3 GFLOP/s vs 174 fp32, the ViT-B/16 trunk 2.2 s per 224 crop vs 0.24 s; on an AVX512-BF16 CPU fp16
    was 3.6x slower than fp32 end to end, bf16 1.6x faster.
    """
    if device.type != "cpu" or dtype in ("fp32", "tf32") or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    cpu = getattr(torch, "cpu", None)
    if dtype == "fp16":
        flags = _cpu_flags()
        if not flags or {"avx512_fp16", "amx_fp16"} & flags:
            return None  # cannot tell, or native fp16
        return ("dtype fp16 on a CPU without AVX512-FP16 or AMX-FP16: torch runs fp16 matmuls on a slow fallback "
                "here (fp16 was 3.6x slower than fp32 end to end even on an AVX512-BF16 CPU); use fp32, or bf16 on a "
                "CPU with AVX512-BF16/AMX, fp16 on a GPU")
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(c is None for c in checks):
        return None  # this torch cannot tell
    if any(c() for c in checks):
        return None
    return (f"dtype {dtype} on a CPU without AVX512-BF16 or AMX: torch runs half-precision matmuls on a slow "
            f"fallback here (measured ~9x slower than fp32 for the ViT-B/16 trunk); use fp32 on this CPU, "
            f"bf16/fp16 on a GPU or a CPU with AVX512-BF16/AMX")


def set_matmul_precision(device: torch.device, dtype: str) -> None:
    """TF32 on CUDA exactly when ``dtype`` is ``tf32`` (an explicit choice, part of the segmenter hash through the
    dtype): torch's process-wide ``allow_tf32`` switches for matmuls and cuDNN convolutions. CPUs: nothing (tf32
    runs as fp32 there)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
        torch.backends.cudnn.allow_tf32 = dtype == "tf32"


def build_model(mc: ModelConfig) -> Tuple[nn.Module, str]:
    """Create the CLIP of ``mc`` on its device and dtype, eval mode. Returns (model, weights digest)."""
    import open_clip

    mc.validate()
    name = resolve_arch(mc.arch, mc.arch_json)
    quick = mc.activation == "quickgelu" or (mc.activation == "auto" and (mc.pretrained in (None, "openai")))
    if mc.pretrained is not None:
        try:
            model = open_clip.create_model(name, pretrained=mc.pretrained, force_quick_gelu=quick)
        except RuntimeError as e:
            raise WeightsError(f"pretrained tag {mc.pretrained!r} for {name}: {e}") from e
        digest = f"open_clip:{name}:{mc.pretrained}"
    else:
        if mc.random_init:
            torch.manual_seed(mc.seed)
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick)
        digest = f"random:{name}:seed{mc.seed}"
        if mc.weights is not None:
            local = fetch_weights(mc.weights)
            sd = load_state_dict(local, source=mc.weights)
            check_state_dict(model, sd, mc.weights)
            model.load_state_dict(sd, strict=True)
            digest = "sha256:" + weights_digest(local)
    if quick:
        acts = {type(b.mlp.gelu).__name__ for b in model.visual.transformer.resblocks if hasattr(b.mlp, "gelu")}
        if acts != {"QuickGELU"}:
            raise ConfigError(f"expected QuickGELU activations for OpenAI-format weights, found {acts}")
    device = resolve_device(mc.device)
    slow = slow_cpu_dtype(device, mc.dtype)
    if slow:
        log.warning("%s", slow)
    set_matmul_precision(device, mc.dtype)
    model = model.to(device=device, dtype=TORCH_DTYPES[mc.dtype]).eval()
    model.requires_grad_(False)
    return model, digest


def tokenizer_for(mc: ModelConfig):
    """open_clip's tokenizer for the architecture (identical ids to OpenAI's for the CLIP models)."""
    import open_clip

    return open_clip.get_tokenizer(resolve_arch(mc.arch, mc.arch_json))


# --- text tower: causal prefix encoding -----------------------------------------------------------------------
# open_clip's CLIP.encode_text runs all context_length (77) positions under a causal mask and reads one token:
# the end-of-text token (``text_pool_type`` "argmax": the largest id, which is EOT in CLIP's vocabulary; "eos":
# the first ``text_eos_id``). Under a causal mask position i sees only positions <= i, so the tokens after the
# last read position of a batch never reach the embedding: a batch truncated to that prefix gives the same
# embeddings (docs/method.md §1.3) at a fraction of the cost (a CLIP prompt is ~10-20 tokens of 77).
TEXT_ATTRS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask",
              "text_pool_type")
TEXT_POOLS = ("argmax", "eos")  # pool types that read one token chosen from the ids


def text_prefix_unsupported(model: nn.Module) -> Optional[str]:
    """Why ``model``'s text tower cannot be run on a prefix (then ``encode_text`` uses the full context), or None.

    Requires the open_clip ``CLIP`` layout (``TEXT_ATTRS`` on the model), a pool type in ``TEXT_POOLS`` and a
    strictly causal additive mask (C, C): ``-inf`` above the diagonal, finite on and below it.
    """
    missing = [a for a in TEXT_ATTRS if not hasattr(model, a)]
    if missing:
        return f"{type(model).__name__} lacks {missing} (not open_clip's CLIP text layout)"
    if model.text_pool_type not in TEXT_POOLS:
        return f"text pool type {model.text_pool_type!r} does not read one token chosen from the ids"
    if model.text_pool_type == "eos" and getattr(model, "text_eos_id", None) is None:
        return "text pool type 'eos' without text_eos_id"
    mask = model.attn_mask
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return "the text tower has no (C, C) attention mask (not causal)"
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    if not (torch.isneginf(mask[upper]).all() and torch.isfinite(mask[~upper]).all()):
        return "the text attention mask is not causal"
    if mask.shape[0] != model.positional_embedding.shape[0]:
        return f"attention mask {tuple(mask.shape)} does not match {model.positional_embedding.shape[0]} positions"
    return None


def text_read_positions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B,) int64: the position whose output ``encode_text`` reads for each row of ``tokens`` (B, C) — the
    end-of-text token — computed as open_clip's ``text_global_pool`` does. Needs ``text_prefix_unsupported``
    to be None."""
    if model.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)  # EOT has the largest id; the first maximum, as text_global_pool takes
    return (tokens == model.text_eos_id).int().argmax(dim=-1)


@torch.no_grad()
def encode_text(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, E) text embeddings (not normalised) of ``tokens`` (B, C) ids, equal to ``model.encode_text(tokens)``
    (within float rounding, max |d| ~1e-6 measured) but computed on the prefix that ends at the batch's last
    read (end-of-text) position: L = max read position + 1 tokens instead of C. Falls back to
    ``model.encode_text`` when ``text_prefix_unsupported(model)`` gives a reason. Shorter batches gain most:
    ``pipeline.model.text.encode_queries`` groups prompts of similar length.
    """
    if text_prefix_unsupported(model) is not None:
        return model.encode_text(tokens)
    pos = text_read_positions(model, tokens)  # (B,)
    n = int(pos.max()) + 1 if pos.numel() else 1
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :n]).to(cast)  # (B, L, W)
    x = x + model.positional_embedding[:n].to(cast)  # (L, W) broadcast over B
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])  # causal (L, L) block of the (C, C) mask
    x = model.ln_final(x)  # (B, L, W)
    x = x[torch.arange(x.shape[0], device=x.device), pos]  # (B, W) at the read positions
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Module) else x @ proj  # (B, E)


def arch_display_name(arch: str) -> str:
    return pathlib.Path(arch).stem if arch.endswith(".json") else arch


__all__ = ["VisionParts", "Block", "vision_parts", "resolve_arch", "inline_arch", "check_weights", "fetch_weights",
           "weights_digest", "weights_identity", "load_state_dict", "check_state_dict", "build_model", "tokenizer_for",
           "WeightsError",
           "TORCH_DTYPES", "resolve_device", "arch_display_name", "slow_cpu_dtype"]
__all__ += ["TEXT_ATTRS", "TEXT_POOLS", "text_prefix_unsupported", "text_read_positions", "encode_text"]
