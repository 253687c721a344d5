"""Command-line options shared by every command (``jobs.label``, ``jobs.evaluate``, ``jobs.overlay``): one
spelling per meaning, declared once.

* model and weights: ``--model``, ``--pretrained`` | ``--weights`` | ``--random-weights``, ``--dtype``, ``--device``;
* segmenter: ``--preset``, ``--method``, ``--base``, ``--vocabulary``, ``--templates``, ``--set KEY=VALUE``
  (any ``SegmenterConfig`` field, value as JSON; checked by ``pipeline.method.presets.get_preset``).

Older spellings still parse, print a deprecation warning and set the same option (``DEPRECATED``).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Optional, Sequence

from pipeline.config import DTYPES, ConfigError, ModelConfig, SegmenterConfig

DEVICES = ("auto", "cpu", "cuda")
DEPRECATED = {  # old spelling -> current one
    "--arch": "--model",
    "--random-init": "--random-weights",
    "--batch-size": "--images-per-call",
    "--read-batch-size": "--read-threads",
}


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: warns on stderr, then stores like the current one."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        print(f"warning: {option_string} is deprecated; use {DEPRECATED[option_string]}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_alias(group: Any, old: str, dest: str, flag: bool = False, type: Any = None) -> None:
    """Register ``old`` (a key of ``DEPRECATED``) as a hidden alias that sets ``dest``."""
    group.add_argument(old, dest=dest, action=DeprecatedAlias, nargs=0 if flag else None, const=True if flag else None,
                       type=type, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_model_options(p: argparse.ArgumentParser, weights_help: str = "") -> None:
    """``--model`` (architecture), one weight source, ``--dtype``, ``--device``."""
    g = p.add_argument_group("model and weights")
    g.add_argument("--model", default="ViT-B-16", help="open_clip architecture name or a JSON config path/URI")
    add_alias(g, "--arch", "model")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--pretrained", help="open_clip pretrained tag, e.g. openai (downloads; needs internet)"
                   + weights_help)
    w.add_argument("--weights", help="weights file/URI (OpenAI state dict, TorchScript, open_clip .pt/.safetensors)")
    w.add_argument("--random-weights", action="store_true",
                   help="smoke mode: random CLIP weights; everything runs but the LABELS ARE MEANINGLESS")
    add_alias(w, "--random-init", "random_weights", flag=True)
    g.add_argument("--dtype", default="fp32", choices=DTYPES)
    g.add_argument("--device", default="auto", choices=DEVICES, help="auto: in a Ray job the GPUs Ray assigned to the "
                   "actor (--gpus-per-actor), else cpu; outside Ray cuda when available")


def has_weights(ns: argparse.Namespace) -> bool:
    return bool(ns.pretrained or ns.weights or ns.random_weights)


def model_config(ns: argparse.Namespace) -> ModelConfig:
    """The ``ModelConfig`` of parsed model options (validated)."""
    return ModelConfig(arch=ns.model, pretrained=ns.pretrained, weights=ns.weights, random_init=ns.random_weights,
                       dtype=ns.dtype, device=ns.device).validate()


def add_segmenter_options(p: argparse.ArgumentParser, preset_required: bool = False,
                          preset_default: Optional[str] = None, preset_help: str = "") -> None:
    """``--preset``, ``--method``, ``--base``, ``--vocabulary``, ``--templates``, ``--set KEY=VALUE``."""
    from pipeline.method.presets import list_presets
    from pipeline.method.variants import BASES, METHODS

    g = p.add_argument_group("segmenter")
    g.add_argument("--preset", required=preset_required, default=preset_default, choices=list_presets(),
                   help="benchmark preset: sizes, thresholds, vocabulary (docs/method.md §3)" + preset_help)
    g.add_argument("--method", default="resclip", choices=list(METHODS), help="resclip = RCS + SFR on the base")
    g.add_argument("--base", default="naclip", choices=list(BASES), help="training-free CLIP segmentation base")
    g.add_argument("--vocabulary", help="class file/URI overriding the preset's (one class per line, ', ' synonyms)")
    g.add_argument("--templates", help="prompt templates file/URI, one per line with {} (default: the 80 ImageNet)")
    g.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="SegmenterConfig fields, values as JSON, e.g. --set temp_thd=0.2 slide_crop=0 "
                        "rcs_weights=[2.0,0.3] crops_per_forward=16 (unknown names list the valid ones)")


def parse_overrides(pairs: Sequence[str]) -> Dict[str, Any]:
    """``["key=json", ...]`` → ``SegmenterConfig`` overrides (JSON lists become tuples; non-JSON stays a string).

    Raises ``ConfigError`` for an item without ``=``; names and value types are checked by ``get_preset``."""
    out: Dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            v = value
        out[key.strip()] = tuple(v) if isinstance(v, list) else v
    return out


def segmenter_config(ns: argparse.Namespace, preset: Optional[str] = None) -> SegmenterConfig:
    """The preset (``preset`` or ``--preset``) with ``--vocabulary``, ``--templates`` and ``--set`` applied."""
    from pipeline.method.presets import get_preset

    overrides = parse_overrides(ns.overrides)
    for key in ("vocabulary", "templates"):
        if getattr(ns, key, None):
            overrides[key] = getattr(ns, key)
    return get_preset(preset or ns.preset, method=ns.method, base=ns.base, **overrides)

