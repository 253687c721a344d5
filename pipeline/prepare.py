"""The one prepare step: vocabulary → model → text embeddings → provenance (docs/method.md §1.3).

``Segmenter.build`` and the labeling job's prepare task both call ``prepare``; what differs is only where
the text cache is written (the job writes it from its driver, so the task passes ``write_cache=False``).

    p = prepare(get_preset("voc21"), ModelConfig(pretrained="openai"), text_cache="out/_text_cache")
    p.provenance["segmenter_hash"]   # 16 hex digits: what decides the labels
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Dict, Optional

from torch import nn

from pipeline.config import ModelConfig, SegmenterConfig
from pipeline.model.clip import arch_display_name, build_model
from pipeline.model.text import TextEmbeddings, encode_vocabulary
from pipeline.model.vocabulary import Vocabulary
from schemas.version import code_version


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything a ``Segmenter`` is made of, loaded once."""

    config: SegmenterConfig
    model_config: ModelConfig
    model: nn.Module  # eval mode, on the configured device and dtype
    weights_digest: str  # "sha256:..." of the weights, or "random:..." (smoke mode)
    vocabulary: Vocabulary
    text: TextEmbeddings  # (Q, E) unit rows for the vocabulary's queries

    @property
    def provenance(self) -> Dict[str, str]:
        return provenance(self.config, self.model_config, self.weights_digest, self.vocabulary)


def segmenter_hash(config: SegmenterConfig, model_config: ModelConfig, weights_digest: str,
                   vocabulary: Vocabulary) -> str:
    """16 hex digits over what decides the labels: the config's label fields (not ``crops_per_forward``), the
    architecture, the weights, the dtype and the vocabulary (classes, synonyms, templates)."""
    return hashlib.sha256(json.dumps(
        [config.label_hash(), model_config.arch, weights_digest, model_config.dtype, vocabulary.hash]
    ).encode()).hexdigest()[:16]


def provenance(config: SegmenterConfig, model_config: ModelConfig, weights_digest: str,
               vocabulary: Vocabulary) -> Dict[str, str]:
    """Columns that identify how labels were made (all strings; ``schemas.LABEL_SCHEMA`` provenance fields
    except ``job_hash`` and ``run_id``, which only a job knows)."""
    return dict(method=config.method, base=config.base, preset=config.preset,
                model=arch_display_name(model_config.arch), weights_digest=weights_digest,
                vocabulary_hash=vocabulary.hash,
                segmenter_hash=segmenter_hash(config, model_config, weights_digest, vocabulary),
                code_version=code_version())


def prepare(config: SegmenterConfig, model_config: ModelConfig, *, vocabulary: Optional[Vocabulary] = None,
            text_embeddings: Optional[TextEmbeddings] = None, text_cache: Optional[str] = None,
            write_cache: bool = True) -> Prepared:
    """Validate both configs, load the vocabulary (before any model work; pass ``vocabulary`` when the caller
    already read ``config.vocabulary``/``config.templates``), build the model, and get the text embeddings
    (given, read from ``text_cache``, or computed — and written to ``text_cache`` unless ``write_cache`` is
    False)."""
    config.validate()
    model_config.validate()
    vocab = vocabulary if vocabulary is not None else Vocabulary.load(config.vocabulary, config.templates)
    if text_embeddings is not None and not text_embeddings.matches(vocab):
        raise ValueError("text_embeddings were computed for another vocabulary than config.vocabulary")
    net, digest = build_model(model_config)
    if text_embeddings is None:
        text_embeddings = encode_vocabulary(model_config, vocab, net, digest, cache_uri=text_cache,
                                            write_cache=write_cache)
    return Prepared(config, model_config, net, digest, vocab, text_embeddings)
