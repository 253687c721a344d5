"""Per-benchmark presets as data (docs/method.md §3), selectable by name and overridable field by field.

``get_preset(name)`` is the released ResCLIP configuration (NACLIP base). With ``method="none"`` the
base's own published frame is used (NACLIP §3.2, SCLIP §3.3, ClearCLIP §3.4); ResCLIP on the other bases
uses the ResCLIP frame (the official repository releases no other tuning). Note ClearCLIP's own class
files differ slightly (single 'background'/'person'/'tvmonitor' names); ours are ResCLIP's.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List

from pipeline.config import ConfigError, SegmenterConfig

NAMES = ("voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade20k", "coco_stuff")

# ResCLIP official configs (§3.1): short side, slide crop (0 = whole image), prob_thd, temp_thd, rcs, sfr.
_RESCLIP: Dict[str, tuple] = {
    "voc21": (336, 0, 0.1, 0.50, (2.0, 0.3), (2.2, 0.7)),
    "context60": (336, 224, 0.1, 0.30, (2.0, 0.3), (1.8, 0.7)),
    "coco_object": (336, 224, 0.1, 0.11, (2.0, 0.4), (1.8, 0.7)),
    "voc20": (336, 0, 0.0, 0.10, (2.0, 0.6), (2.1, 0.6)),
    "cityscapes": (560, 224, 0.0, 0.10, (2.0, 0.2), (2.1, 0.6)),
    "context59": (336, 224, 0.0, 0.25, (2.0, 0.4), (1.8, 0.7)),
    "ade20k": (336, 224, 0.0, 0.25, (2.0, 0.3), (2.1, 0.7)),
    "coco_stuff": (336, 224, 0.0, 0.11, (2.0, 0.4), (1.8, 0.7)),
}
_WITH_BACKGROUND = ("voc21", "context60", "coco_object")
# SCLIP (§3.3): short side, logit_scale, prob_thd, area_thd; always slide 224/112.
_SCLIP: Dict[str, tuple] = {
    "voc21": (336, 65.0, 0.1, 0.1), "context60": (336, 50.0, 0.1, None), "coco_object": (336, 50.0, 0.1, None),
    "voc20": (336, 40.0, 0.0, None), "context59": (336, 40.0, 0.0, None), "ade20k": (336, 40.0, 0.0, None),
    "coco_stuff": (448, 40.0, 0.0, None), "cityscapes": (560, 40.0, 0.0, None),
}
# ClearCLIP (§3.4): prob_thd; short side 448, crop 448 / stride 224 (Cityscapes 224 / 224), logit_scale 50.
_CLEARCLIP_PROB = {"voc21": 0.5, "context60": 0.15, "coco_object": 0.4}
# old field names still accepted as overrides (with a DeprecationWarning): old -> current
RENAMED_FIELDS = {"batch_size": "crops_per_forward"}


def _typed(name: str, annotation: str, value: Any) -> Any:
    """``value`` as the type of field ``name`` (annotation text such as "float", "Optional[float]",
    "Tuple[int, ...]"): ints become floats for float fields, lists tuples; anything else raises ``ConfigError``."""
    def bad(what: str) -> ConfigError:
        return ConfigError(f"SegmenterConfig.{name}={value!r}: expected {what}")

    if annotation.startswith("Optional["):
        return None if value is None else _typed(name, annotation[len("Optional["):-1], value)
    if annotation.startswith("Tuple["):
        inner = annotation[len("Tuple["):-1].split(", ")
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list like [{', '.join(inner)}]")
        kinds = [inner[0]] * len(value) if inner[-1] == "..." else inner
        if len(kinds) != len(value):
            raise bad(f"{len(kinds)} values")
        return tuple(_typed(name, k, v) for k, v in zip(kinds, value))
    if annotation == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if annotation in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (annotation == "int" and not
                                                                               isinstance(value, int)):
            raise bad(f"a number ({annotation})")
        return float(value) if annotation == "float" else value
    if annotation == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise bad(annotation)  # a field type this function does not know: refuse rather than guess


def list_presets() -> List[str]:
    return list(NAMES)


def _resclip_frame(name: str) -> Dict[str, Any]:
    short, crop, prob, temp, rcs, sfr = _RESCLIP[name]
    return dict(resize_short=short, slide_crop=crop, slide_stride=112, prob_thd=prob, temp_thd=temp,
                rcs_weights=rcs, sfr_weights=sfr, logit_scale=40.0)


def _base_frame(name: str, base: str) -> Dict[str, Any]:
    """The published frame of ``base`` alone (method ``none``)."""
    d = _resclip_frame(name)
    if base == "naclip":
        d.update(pamr_steps=10, prob_thd=0.1 if name in _WITH_BACKGROUND else 0.0)
    elif base == "sclip":
        short, scale, prob, area = _SCLIP[name]
        d.update(resize_short=short, slide_crop=224, logit_scale=scale, prob_thd=prob, area_thd=area,
                 direct_resize=True)
    elif base == "clearclip":
        crop, stride = (224, 224) if name == "cityscapes" else (448, 224)
        d.update(resize_short=448, slide_crop=crop, slide_stride=stride, logit_scale=50.0,
                 prob_thd=_CLEARCLIP_PROB.get(name, 0.0), pad_to_patch=True, direct_resize=True)
    return d


def get_preset(name: str, method: str = "resclip", base: str = "naclip", **overrides: Any) -> SegmenterConfig:
    """The validated config of benchmark ``name`` for ``method`` on ``base``, with field overrides."""
    if name not in _RESCLIP:
        raise KeyError(f"unknown preset {name!r}; valid: {', '.join(NAMES)}")
    for old, new in RENAMED_FIELDS.items():
        if old in overrides:
            warnings.warn(f"SegmenterConfig field {old!r} is now {new!r}", DeprecationWarning, stacklevel=2)
            overrides[new] = overrides.pop(old)
    fields = {f.name for f in dataclasses.fields(SegmenterConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"unknown SegmenterConfig fields {bad}; valid: {', '.join(sorted(fields))}")
    types = {f.name: f.type for f in dataclasses.fields(SegmenterConfig)}
    overrides = {k: _typed(k, str(types[k]), v) for k, v in overrides.items()}
    frame = _base_frame(name, base) if method == "none" else _resclip_frame(name)
    fields_ = {"preset": name, "method": method, "base": base, "vocabulary": name, **frame, **overrides}
    cfg = SegmenterConfig(**fields_)
    return cfg.validate()
