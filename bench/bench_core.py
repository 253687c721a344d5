"""Per-crop time of the bare ViT trunk vs each variant, fp32 vs bf16, batch 1 vs batched.

Random ViT-B/16 weights (timings do not depend on the values). Writes JSON (``--out``) with machine
info; ``--markdown`` prints the README table. Ratios are measured side by side in one run: report
medians, never compare absolute numbers across machines or runs. The trunk and the variants are timed
round-robin (one call of each per round), so load changes on a shared machine hit all of them alike. The
variants write their (B, Q, H, W) logits into one reused buffer, as ``Segmenter`` does.

    .venv/bin/python bench/bench_core.py --out bench/results/core.json --markdown
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch

from pipeline import ModelConfig
from pipeline.kernels import native
from pipeline.method.dense import DenseParams, crop_logits, embed
from pipeline.method.variants import get_variant
from pipeline.model.clip import TORCH_DTYPES, build_model, vision_parts

VARIANTS = ["none/vanilla", "none/sclip", "none/clearclip", "none/naclip", "rcs/naclip", "sfr/naclip", "resclip/naclip"]


def _interleaved_medians(fns: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Median seconds of each function, timed round-robin (one call of each per round) so that a change in
    the machine's load during the run hits every function alike; one warm-up round first."""
    for fn in fns.values():
        fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine_info() -> Dict[str, object]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "pamr_kernel_cpu": "native" if native.kernel() is not None else "torch",
            "pamr_kernel_threads": native.threads(native.kernel()) if native.kernel() is not None else None,
            "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                          if f in native._cpu_flags().split()]}


def run(arch: str, queries: List[int], dtypes: List[str], batches: List[int], size: tuple, repeats: int,
        variants: List[str], device: str) -> List[Dict[str, object]]:
    rows = []
    for dtype in dtypes:
        model, _ = build_model(ModelConfig(arch=arch, random_init=True, dtype=dtype, device=device))
        vp = vision_parts(model)
        dev = next(model.parameters()).device
        for q in queries:
            text = torch.nn.functional.normalize(torch.randn(q, vp.proj.shape[1]), dim=-1).to(dev, TORCH_DTYPES[dtype])
            for b in batches:
                x = torch.randn(b, 3, *size, device=dev, dtype=TORCH_DTYPES[dtype])
                sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

                def trunk():  # the bare ViT: embed (interpolated positions) + all blocks + ln_post/proj
                    with torch.no_grad():
                        tokens, _ = embed(vp, x)
                        for blk in vp.blocks:
                            tokens = blk.module(tokens)
                        vp.ln_post(tokens) @ vp.proj
                    sync()

                out = torch.empty(b, q, *size, device=dev)  # reused, as Segmenter._run does

                def method(p: DenseParams) -> Callable[[], None]:
                    def run() -> None:
                        crop_logits(vp, x, text, p, out=out)
                        sync()
                    return run

                fns: Dict[str, Callable[[], object]] = {"trunk": trunk}
                fns.update({name: method(DenseParams(get_variant(*name.split("/")), temp_thd=0.1))
                            for name in variants})
                med = _interleaved_medians(fns, repeats)
                for name, t in med.items():
                    rows.append(dict(dtype=dtype, queries=q, batch=b, size=list(size), variant=name,
                                     s_per_crop=t / b, ratio=t / med["trunk"]))
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: List[Dict[str, object]]) -> str:
    """The README table: one line per (input, dtype, queries, batch), the bare trunk's s/crop and each
    variant's ratio to it ("–" where a variant was not run)."""
    keys: Dict[tuple, Dict[str, Dict[str, object]]] = {}
    variants: List[str] = []
    for r in rows:
        key = (f"{r['size'][0]}x{r['size'][1]}", r["dtype"], r["queries"], r["batch"])
        keys.setdefault(key, {})[r["variant"]] = r
        if r["variant"] != "trunk" and r["variant"] not in variants:
            variants.append(r["variant"])
    head = ["input", "dtype", "queries", "batch", "bare trunk s/crop"] + [f"{v} ×" for v in variants]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, by in keys.items():
        cells = [str(k) for k in key] + [f"{by['trunk']['s_per_crop']:.3f}" if "trunk" in by else "–"]
        cells += [f"{by[v]['ratio']:.2f}" if v in by else "–" for v in variants]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--queries", type=int, nargs="+", default=[7, 150])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--size", type=int, nargs=2, default=[224, 224], help="crop H W (336 500 = a whole image)")
    ap.add_argument("--variants", nargs="+", default=VARIANTS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--render", nargs="+", metavar="JSON", help="print the README table of saved results and exit")
    a = ap.parse_args()
    if a.render:
        rows = [r for f in a.render for r in json.load(open(f))["rows"]]
        print(markdown(rows))
        return
    rows = run(a.arch, a.queries, a.dtypes, a.batches, tuple(a.size), a.repeats, a.variants, a.device)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"machine": machine_info(), "args": vars(a), "rows": rows}, f, indent=1)
    if a.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
