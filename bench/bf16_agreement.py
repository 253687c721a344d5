"""Label agreement of bf16 (weights cast) with fp32, same random ViT-B/16 weights, on the bundled samples.

Random weights make near-ties everywhere (most pixels' top-2 class probabilities differ by < 0.03), so the
script also splits the pixels by the fp32 top-2 margin and reports where the disagreements are. Writes JSON
(``--out``); prints one line per vocabulary.

    .venv/bin/python bench/bf16_agreement.py --out bench/results/bf16_agreement.json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image

from pipeline import ModelConfig, get_preset
from pipeline.segmenter import Segmenter

SAMPLES = Path(__file__).resolve().parents[1] / "pipeline" / "data" / "samples"
CLASSNAMES = Path(__file__).resolve().parents[1] / "pipeline" / "data" / "classnames"
NEAR_TIE = 1e-3  # fp32 top-2 class-probability margin


def measure(vocabulary: str, preset: str, templates: str, arch: str) -> Dict[str, object]:
    cfg = get_preset(preset, vocabulary=vocabulary, templates=templates)
    fp = Segmenter.build(cfg, ModelConfig(arch=arch, random_init=True, dtype="fp32"))
    bf = Segmenter(cfg, dataclasses.replace(fp.model_config, dtype="bf16"), copy.deepcopy(fp.model).to(torch.bfloat16),
                   fp.weights_digest, fp.vocabulary, fp.text)
    pixels = agree = near = near_agree = 0
    t_fp = t_bf = 0.0
    for path in sorted(SAMPLES.glob("*.jpg")):
        img = np.asarray(Image.open(path).convert("RGB"))
        t = time.perf_counter()
        ref = fp.segment([img], return_probs=True)[0]
        t_fp += time.perf_counter() - t
        t = time.perf_counter()
        got = bf.segment([img])[0]
        t_bf += time.perf_counter() - t
        top2 = np.sort(ref.probs, axis=0)[-2:]  # (2, H, W)
        tie = (top2[1] - top2[0]) < NEAR_TIE
        same = got.labels == ref.labels
        pixels += same.size
        agree += int(same.sum())
        near += int(tie.sum())
        near_agree += int((same & tie).sum())
    far = pixels - near
    return {"vocabulary": Path(vocabulary).name, "preset": preset, "queries": len(fp.text.embeddings),
            "pixels": pixels, "agreement": agree / pixels, "near_tie_pixels": near / pixels,
            "agreement_outside_near_ties": (agree - near_agree) / max(far, 1),
            "disagreements_outside_near_ties": far - (agree - near_agree),
            "fp32_s": t_fp, "bf16_s": t_bf, "speedup": t_fp / t_bf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--vocabularies", nargs="+",
                    default=[str(SAMPLES / "vocabulary.txt"), str(CLASSNAMES / "cls_ade20k.txt")])
    ap.add_argument("--preset", default="ade20k")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        templates = Path(tmp) / "templates.txt"  # two templates: text encoding is not what is measured
        templates.write_text("a photo of a {}.\na photo of the {}.\n")
        for vocab in args.vocabularies:
            row = measure(vocab, args.preset, str(templates), args.arch)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "near_tie_margin": NEAR_TIE, "rows": rows},
                                             indent=1) + "\n")


if __name__ == "__main__":
    main()
