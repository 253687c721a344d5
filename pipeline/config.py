"""Frozen, validated configuration for the model and the segmenter.

Config is data: every field is a plain value, ``to_dict()`` is what gets written into Parquet
metadata and run manifests, and ``validate()`` runs before any model work.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Optional, Tuple

DTYPES = ("fp32", "tf32", "bf16", "fp16")  # tf32: fp32 weights, TF32 matmuls/convolutions on CUDA (fp32 on CPU)
# crops_per_forward when the config leaves it None, per device type: a CPU gains nothing past ~8 crops of 224²
# (the trunk is compute-bound at 1-2 threads), a GPU needs batches of 32+ crops to fill its matrix units.
DEVICE_CROPS_PER_FORWARD = {"cpu": 8, "cuda": 32}


def crops_per_forward_for(config: "SegmenterConfig", device_type: str) -> int:
    """The crops per trunk forward for ``config`` on a device of type ``device_type`` (cpu, cuda, ...)."""
    if config.crops_per_forward is not None:
        return config.crops_per_forward
    return DEVICE_CROPS_PER_FORWARD.get(device_type, DEVICE_CROPS_PER_FORWARD["cpu"])
ACTIVATIONS = ("auto", "quickgelu", "gelu")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the valid values."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which CLIP to build and with which weights.

    Exactly one weight source: ``pretrained`` (an open_clip tag such as ``"openai"``, downloaded by
    open_clip where internet exists), ``weights`` (a local path or fsspec URI to an OpenAI-format state
    dict, an OpenAI TorchScript archive, or an open_clip checkpoint ``.pt``/``.safetensors``), or
    ``random_init=True`` (smoke tests only: labels are meaningless).
    """

    arch: str = "ViT-B-16"
    arch_json: Optional[str] = None  # text of the JSON config when ``arch`` is a .json path (see models.inline_arch)
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    random_init: bool = False
    seed: int = 0  # only used with random_init
    activation: str = "auto"  # auto: QuickGELU for OpenAI weights and plain files, else open_clip's choice
    dtype: str = "fp32"
    device: str = "auto"  # auto: cuda when available, else cpu

    def validate(self) -> "ModelConfig":
        sources = [self.pretrained is not None, self.weights is not None, self.random_init]
        if sum(sources) != 1:
            raise ConfigError(
                "ModelConfig needs exactly one weight source: pretrained=TAG, weights=PATH_OR_URI, "
                f"or random_init=True (got pretrained={self.pretrained!r}, weights={self.weights!r}, "
                f"random_init={self.random_init})"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"ModelConfig.dtype={self.dtype!r}; valid: {', '.join(DTYPES)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"ModelConfig.activation={self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SegmenterConfig:
    """Everything that decides the labels for a given model and vocabulary (docs/method.md §1–3).

    Sizes are pixels; ``resize_short``/``resize_long`` follow mmcv's keep-ratio rescale with
    ``scale=(resize_long, resize_short)``. ``slide_crop == 0`` means whole-image inference.
    """

    preset: str = "custom"
    method: str = "resclip"  # resclip | rcs | sfr | none  (see pipeline.method.variants.METHODS)
    base: str = "naclip"  # vanilla | sclip | clearclip | naclip  (see pipeline.method.variants.BASES)
    vocabulary: str = "voc21"  # a benchmark name (see vocabulary.BENCHMARK_VOCABULARIES) or a file path/URI
    templates: Optional[str] = None  # None: the 80 ImageNet templates; else a file path/URI, one per line
    resize_short: int = 336
    resize_long: int = 2048
    slide_crop: int = 224
    slide_stride: int = 112
    pad_to_patch: bool = False  # ClearCLIP: zero-pad crops to a multiple of the patch size
    direct_resize: bool = False  # SCLIP/ClearCLIP whole image: patch grid straight to original size
    logit_scale: float = 40.0
    prob_thd: float = 0.0
    area_thd: Optional[float] = None
    temp_thd: float = 0.1
    rcs_weights: Tuple[float, float] = (2.0, 0.3)  # (tau, lambda)
    sfr_weights: Tuple[float, float] = (2.1, 0.7)  # (tau, lambda)
    rcs_layers: Tuple[int, ...] = (6, 7, 8, 9)  # 1-based; parity: hard-coded in the official code
    delete_same_entity: bool = True
    gaussian_std: float = 5.0  # sigma of the neighbourhood prior and SFR smoothing, in patches
    pamr_steps: int = 0  # final PAMR on the original-size logits (NACLIP's default post-processing)
    pamr_dilations: Tuple[int, ...] = (8, 16)
    max_side_after_resize: int = 4096  # refuse images whose resized side exceeds this
    # crops (of one shape, from any images of a call) per trunk forward; None: the device's default
    # (DEVICE_CROPS_PER_FORWARD). Not in the hash: batched output equals the one-crop-at-a-time path (tested).
    crops_per_forward: Optional[int] = None

    def validate(self) -> "SegmenterConfig":
        from pipeline.method import variants  # local import: variants imports torch

        variants.get_variant(self.method, self.base)  # raises KeyError listing names
        _positive("resize_short", self.resize_short)
        _positive("resize_long", self.resize_long)
        if self.crops_per_forward is not None:
            _positive("crops_per_forward", self.crops_per_forward)
        if self.slide_crop < 0 or (self.slide_crop > 0 and self.slide_stride <= 0):
            raise ConfigError(
                f"slide_crop={self.slide_crop}, slide_stride={self.slide_stride}: crop must be >= 0 "
                "(0 = whole image) and stride > 0 when sliding"
            )
        if self.logit_scale <= 0:
            raise ConfigError(f"logit_scale={self.logit_scale} must be > 0")
        for name in ("prob_thd", "temp_thd"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name}={v} must be a probability in [0, 1]")
        if self.area_thd is not None and not 0.0 <= self.area_thd <= 1.0:
            raise ConfigError(f"area_thd={self.area_thd} must be None or in [0, 1]")
        for name in ("rcs_weights", "sfr_weights"):
            v = getattr(self, name)
            if len(v) != 2 or not 0.0 <= v[1] <= 1.0:
                raise ConfigError(f"{name}={v} must be (tau, lambda) with lambda in [0, 1]")
        if not self.rcs_layers or min(self.rcs_layers) < 1:
            raise ConfigError(f"rcs_layers={self.rcs_layers} must be non-empty 1-based layer numbers")
        if self.gaussian_std <= 0:
            raise ConfigError(f"gaussian_std={self.gaussian_std} must be > 0")
        if self.pamr_steps < 0 or any(d <= 0 for d in self.pamr_dilations):
            raise ConfigError("pamr_steps must be >= 0 and pamr_dilations positive")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def label_hash(self) -> str:
        """Hash of the fields that change labels (not ``crops_per_forward``): part of the incremental-run key."""
        d = self.to_dict()
        d.pop("crops_per_forward")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
