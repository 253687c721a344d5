"""Text embeddings: the full 77-token context (before) vs causal prefix encoding grouped by length (after).

Random weights of a real architecture (default ViT-B/16, the text tower is what runs), the 80 ImageNet templates
and ``--classes`` VOC class names (one query each). "before" is the loop ``encode_queries`` ran until issue 22:
``model.encode_text`` on the whole context, 256 prompts a batch in prompt order. "after" is
``pipeline.model.text.encode_queries``: prompts sorted by length, each batch run up to its longest prompt's
end-of-text token. Both give (Q, E) unit query embeddings; the JSON has their max |d| and minimum cosine,
the per-prompt max |d|, the median of ``--repeats`` timings, prompts per second, the token lengths, the CPU
flags and load. The machine is shared: compare the two modes of one run, not runs across machines.

    .venv/bin/python bench/text_encoding.py --out bench/results/text_encoding.json
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

import torch

from pipeline import ModelConfig
from pipeline.model.clip import build_model, encode_text, text_read_positions, tokenizer_for
from pipeline.model.vocabulary import Vocabulary, default_templates

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench.machine import key_cpu_flags, write_report  # noqa: E402

VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
       "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "television monitor"]


@torch.no_grad()
def encode_full_context(model, tokenizer, vocab: Vocabulary, batch_size: int = 256) -> torch.Tensor:
    """(Q, E) unit query embeddings the way encode_queries computed them before issue 22 (whole context)."""
    prompts = [p for q in vocab.query_names for p in vocab.prompts(q)]
    feats = []
    for i in range(0, len(prompts), batch_size):
        f = model.encode_text(tokenizer(prompts[i:i + batch_size])).float()  # (b, E)
        feats.append(f / f.norm(dim=-1, keepdim=True))
    per_prompt = torch.cat(feats).reshape(vocab.num_queries, len(vocab.templates), -1)  # (Q, T, E)
    mean = per_prompt.mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True)


def main() -> None:
    from pipeline.model.text import encode_queries

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--classes", type=int, default=4, help="first N VOC class names (one query each)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    load_before = os.getloadavg()
    mc = ModelConfig(arch=a.arch, random_init=True)
    model, _ = build_model(mc)
    tokenizer = tokenizer_for(mc)
    vocab = Vocabulary.from_lines(VOC[:a.classes], default_templates())
    prompts = [p for q in vocab.query_names for p in vocab.prompts(q)]
    tokens = tokenizer(prompts)
    lengths = (text_read_positions(model, tokens) + 1).tolist()

    # Per-prompt agreement (raw embeddings, before any normalisation): each prompt's own prefix vs full context.
    with torch.no_grad():
        full_raw = torch.cat([model.encode_text(tokens[i:i + 64]) for i in range(0, len(prompts), 64)])
    prefix_raw = torch.cat([encode_text(model, tokens[i:i + 64]) for i in range(0, len(prompts), 64)])
    per_prompt_max = float((prefix_raw - full_raw).abs().max())

    times = {"before_full_context": [], "after_prefix_grouped": []}
    out = {}
    for _ in range(a.repeats):  # round-robin so load changes hit both modes alike
        t = time.perf_counter()
        out["before"] = encode_full_context(model, tokenizer, vocab)
        times["before_full_context"].append(time.perf_counter() - t)
        t = time.perf_counter()
        out["after"] = encode_queries(model, tokenizer, vocab)
        times["after_prefix_grouped"].append(time.perf_counter() - t)
    before, after = out["before"], out["after"]
    med = {k: statistics.median(v) for k, v in times.items()}
    report = dict(
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), threads=torch.get_num_threads(),
                     cpu_flags=key_cpu_flags(), torch=torch.__version__, loadavg_before=load_before,
                     loadavg_after=os.getloadavg(), note="2-core box shared with other engineers: timings noisy"),
        arch=a.arch, weights="random (seed 0)", queries=vocab.num_queries, templates=len(vocab.templates),
        prompts=len(prompts), context_length=int(tokens.shape[1]),
        tokens_to_eot=dict(min=min(lengths), median=statistics.median(lengths), max=max(lengths)),
        seconds={k: [round(x, 3) for x in v] for k, v in times.items()},
        median_s={k: round(v, 3) for k, v in med.items()},
        prompts_per_s={k: round(len(prompts) / v, 1) for k, v in med.items()},
        speedup=round(med["before_full_context"] / med["after_prefix_grouped"], 2),
        agreement=dict(per_prompt_raw_max_abs=per_prompt_max,
                       query_unit_max_abs=float((after - before).abs().max()),
                       query_min_cosine=float((after * before).sum(-1).min())),
    )
    write_report(report, a.out)


if __name__ == "__main__":
    main()
