"""reslabel's dense-inference core: torch + open_clip + numpy. Never imports ray.

Public API (the README shows it in use):

    from pipeline import ModelConfig, Segmenter, get_preset
    seg = Segmenter.build(get_preset("voc21"), ModelConfig(pretrained="openai"))
    results = seg.segment([rgb_uint8_image])        # list[SegmentationResult]
    logits = seg.dense_logits(normalised_bchw)      # (B, Q, H, W) cosine logits before final resize
"""
from pipeline.config import ConfigError, ModelConfig, SegmenterConfig

__all__ = [
    "ConfigError",
    "ModelConfig",
    "SegmenterConfig",
    "Segmenter",
    "SegmentationResult",
    "get_preset",
    "list_presets",
    "get_variant",
    "list_variants",
    "Vocabulary",
]


def __getattr__(name: str):  # lazy: importing the package stays cheap for the schema/IO layers
    if name in ("Segmenter", "SegmentationResult"):
        from pipeline import segmenter

        return getattr(segmenter, name)
    if name in ("get_preset", "list_presets"):
        from pipeline import presets

        return getattr(presets, name)
    if name in ("get_variant", "list_variants"):
        from pipeline import variants

        return getattr(variants, name)
    if name == "Vocabulary":
        from pipeline.vocabulary import Vocabulary

        return Vocabulary
    raise AttributeError(name)
