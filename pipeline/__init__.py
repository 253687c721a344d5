"""reslabel's dense-inference core and label consumers: torch + open_clip + numpy. Never imports ray.

Public API (the README shows it in use):

    from pipeline import ModelConfig, Segmenter, get_preset, open_run
    seg = Segmenter.build(get_preset("voc21"), ModelConfig(pretrained="openai"))
    results = seg.segment([rgb_uint8_image])        # list[SegmentationResult]
    logits = seg.dense_logits(normalised_bchw)      # (B, Q, H, W) cosine logits before final resize
    run = open_run("out/runs/<run_id>")             # a committed labeling run (pipeline.labels.reader)

The subpackages follow the data path of one image (ARCHITECTURE.md): ``io`` (URIs, decoding) →
``model`` (weights, vocabulary, text embeddings) → ``method`` (presets, pre-processing, the dense forward,
variants, SFR, post-processing) with ``kernels`` (the CPU kernel and its torch references) →
``labels`` (RLE, segments, the run reader, exports, overlays, the torch Dataset) → ``evaluation``.
``prepare`` (``pipeline.prepare.prepare``: vocabulary → model → text embeddings) and ``segmenter`` compose
them. (``prepare`` is not re-exported here: it is also the submodule's name.)
"""
from pipeline.config import ConfigError, ModelConfig, SegmenterConfig

__all__ = [
    "ConfigError",
    "ModelConfig",
    "SegmenterConfig",
    "Segmenter",
    "SegmentationResult",
    "Prepared",
    "get_preset",
    "list_presets",
    "get_variant",
    "list_variants",
    "Vocabulary",
    "open_run",
]

# lazy: importing the package stays cheap for the schema/IO layers (torch only when a name needs it)
_LAZY = {
    "Segmenter": "pipeline.segmenter",
    "SegmentationResult": "pipeline.segmenter",
    "Prepared": "pipeline.prepare",
    "get_preset": "pipeline.method.presets",
    "list_presets": "pipeline.method.presets",
    "get_variant": "pipeline.method.variants",
    "list_variants": "pipeline.method.variants",
    "Vocabulary": "pipeline.model.vocabulary",
    "open_run": "pipeline.labels.reader",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
