"""Evaluate on a benchmark in mmseg layout: mIoU, per-class IoU, pixel accuracy (paper protocol).

    python -m jobs.evaluate --benchmark voc21 --data-root data/VOCdevkit/VOC2012 --weights ViT-B-16.pt
    python -m jobs.evaluate --benchmark voc21 --data-root data/VOCdevkit/VOC2012 --run out/runs/<run_id>

The first form runs the segmenter in-process with the benchmark's preset (override fields with
``--set key=value``); the second scores an existing labeling run of the same images. Writes
``metrics.json`` and ``metrics.md`` to ``--out-dir``. No Ray: evaluation is one ordered pass over the
validation set (use a GPU machine for the full sets).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Tuple

from jobs import options
from pipeline.evaluation.benchmarks import BENCHMARKS, get_benchmark
from pipeline.evaluation.metrics import LabelError
from pipeline.evaluation.protocol import default_out_dir, evaluate, run_predictor, segmenter_predictor, write_report
from pipeline.labels.reader import UNLABELED, RunNotCommitted, open_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    p.add_argument("--data-root", required=True, help="mmseg data_root of the benchmark (e.g. VOCdevkit/VOC2012)")
    p.add_argument("--run", help="score this labeling run instead of running the segmenter")
    p.add_argument("--allow-partial", action="store_true", help="with --run: accept a run without _SUCCESS.json")
    options.add_segmenter_options(p, preset_help=" (default: the benchmark's)")
    options.add_model_options(p)
    p.add_argument("--text-cache", help="where to cache text embeddings (path or URI)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images (sorted by name)")
    p.add_argument("--out-dir", help="report directory (default eval/<benchmark>-<time>)")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.run and not options.has_weights(args):
        p.error("give weights (--weights PATH | --pretrained TAG | --random-weights) or an existing --run")
    return args


def _build_segmenter(args: argparse.Namespace):
    from pipeline.segmenter import Segmenter

    cfg = options.segmenter_config(args, args.preset or args.benchmark)
    mc = options.model_config(args)
    return Segmenter.build(cfg, mc, text_cache=args.text_cache), {"segmenter": cfg.to_dict(), "model": mc.to_dict()}


def _predictor(args: argparse.Namespace, bench) -> Tuple[Any, List[str], bool, Dict]:
    if args.run:
        run = open_run(args.run, allow_partial=args.allow_partial)
        predict, fill = run_predictor(run, bench)
        return predict, run.categories, fill == UNLABELED, {"run": args.run, "unlabeled_fill": fill}
    seg, configs = _build_segmenter(args)
    return segmenter_predictor(seg), seg.class_names, False, configs


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    bench = get_benchmark(args.benchmark)
    try:
        predict, names, allow_unlabeled, extra = _predictor(args, bench)
        scores = evaluate(bench, args.data_root, names, predict, limit=args.limit,
                          allow_unlabeled_pred=allow_unlabeled, log=lambda m: print(m, file=sys.stderr))
    except (RunNotCommitted, LabelError, FileNotFoundError, KeyError, ValueError) as e:  # ConfigError too
        print(f"evaluation failed: {e}", file=sys.stderr)
        return 2
    json_uri, md_uri = write_report(scores, args.out_dir or default_out_dir(bench.name), extra)
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"{bench.name}: mIoU {fmt(scores['mIoU'])}  aAcc {fmt(scores['aAcc'])}  ({scores['num_images']} images)")
    print(f"wrote {json_uri} and {md_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
