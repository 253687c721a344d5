"""Fill the tables of docs/performance.md from bench/results/*.json, so the numbers and the files cannot drift.

    .venv/bin/python scripts/perf_doc.py           # rewrite every generated block of docs/performance.md
    .venv/bin/python scripts/perf_doc.py --check   # exit 1 and name the blocks that are out of date (a test runs it)

A generated block is the text between ``<!-- table: NAME -->`` and ``<!-- /table -->``; NAME picks a renderer of
``RENDERERS`` (one small function per family of result files). The block ``index`` lists every results file with
its date and the CPU flags recorded in it, so a file without a table still shows up, and a table's numbers always
come from the file it names.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import re
import sys
from typing import Callable, Dict, List

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _load(name: str) -> dict:
    with open(RESULTS / name) as f:
        return json.load(f)


def _table(head: List[str], rows: List[List[object]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _flags(d: dict) -> str:
    m = d.get("machine") or {}
    flags = m.get("cpu_flags")
    if flags is None:
        return "not recorded"
    return ", ".join(flags) if flags else "none of the listed"


def index() -> str:
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        d = json.loads(path.read_text())
        when = d.get("measured_at") or d.get("machine", {}).get("measured_at") or "–"
        dev = (d.get("machine") or {}).get("device") or (d.get("machine") or {}).get("gpu") or "CPU"
        rows.append([f"`{path.name}`", when[:10] if when != "–" else when, dev, _flags(d)])
    return _table(["results file", "measured", "device", "CPU flags recorded"], rows)


def core() -> str:
    spec = importlib.util.spec_from_file_location("bench_core", ROOT / "bench" / "bench_core.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))
    spec.loader.exec_module(mod)
    rows = [r for f in ("core_crop224.json", "core_crop224_bf16.json", "core_whole336x500.json",
                        "core_whole336x500_q56.json") for r in _load(f)["rows"]]
    return mod.markdown(rows)


def bf16() -> str:
    d = _load("bf16_agreement.json")
    rows = [[r["preset"], r["queries"], f"{100 * r['agreement']:.2f} %", f"{100 * r['near_tie_pixels']:.1f} %",
             f"{100 * r['agreement_outside_near_ties']:.4f} %", f"{r['speedup']:.2f}×"] for r in d["rows"]]
    return _table(["preset", "queries", "bf16 = fp32 labels", "fp32 near-tie pixels (top-2 < 1e-3)",
                   "agreement away from near-ties", "bf16 speed-up"], rows)


def job() -> str:
    rows = []
    for name in ("job_tiny.json", "job_tiny_256.json"):
        d = _load(name)
        for r in d["runs"]:
            rows.append([r["images"], f"{r['job']['wall_seconds']:.1f}", f"{r['in_process']['seconds']:.1f}",
                         f"{r['ratio_job_over_in_process']:.2f}×", f"{r['job']['peak_rss_gib']:.2f} GiB",
                         f"`{name}`"])
    return _table(["images", "job wall s", "in-process s", "job / in-process speed", "job peak RSS", "file"], rows)


def startup() -> str:
    """``bench/job_throughput.py --checkout``: this code's job and the checkout's on the same images."""
    d = _load("job_startup.json")
    rows = []
    for r in d["runs"]:
        for name, label in (("job_before", "before"), ("job", "after")):
            if name not in r:
                continue
            j, b = r[name], r[name]["breakdown"]
            label_ratio, wall_ratio = r[f"ratio_{name}_over_in_process"], r[f"ratio_{name}_wall_over_in_process"]
            rows.append([r["images"], label, f"{j['wall_seconds']:.1f}", f"{r['in_process']['seconds']:.1f}",
                         f"{label_ratio:.2f}×", f"{wall_ratio:.2f}×",
                         b.get("ray_start_seconds", "–"), b.get("plan_seconds", "–"), b.get("prepare_seconds", "–"),
                         b.get("label_seconds", "–")])
    return _table(["images", "code", "job wall s", "in-process s", "label-phase speed / in-process",
                   "in-process s / job wall s", "Ray start s", "plan s", "prepare wait s", "label s"], rows)


def noop() -> str:
    """``bench/job_noop.py --checkout``: a scheduled run with nothing new, this code vs the checkout's."""
    d = _load("job_noop.json")
    rows = []
    for name, label in (("checkout", "before"), ("this", "after")):
        if name not in d["noop"]:
            continue
        runs = d["noop"][name]["runs"]
        job = [r["job_seconds"] for r in runs if "job_seconds" in r]
        ray_s = [r["ray_start_seconds"] for r in runs if "ray_start_seconds" in r]
        rows.append([label, d["arch"], len(runs), f"{d['noop'][name]['median_wall_seconds']:.1f}",
                     f"{sorted(job)[len(job) // 2]:.1f}" if job else "not printed",
                     f"{sorted(ray_s)[len(ray_s) // 2]:.1f}" if ray_s else "not printed"])
    return _table(["code", "model", "runs", "median wall s (process)", "median job s (its summary)",
                   "of which Ray start-up s"], rows)


def decode() -> str:
    d = _load("decode_memory.json")
    rows = [[c["case"], f"{c['peak_uss_mib']:.0f}", f"{c['reserved_mib']:.0f}", "yes" if c["covered"] else "NO"]
            for c in d["cases"]]
    return _table(["read+decode task", "peak USS MiB", "reserved MiB", "covered"], rows)


def plan() -> str:
    d = _load("job_scale_plan.json")
    rows = [[r["kind"], f"{r['n']:,}", f"{r['seconds']:.1f}", f"{r['driver_peak_rss_mib']:.0f}"] for r in d["results"]]
    inc = _load("job_scale_incremental.json")["results"][0]
    rows.append([f"incremental: {inc['new']:,} new vs {inc['committed']:,} committed", f"{inc['planned']:,} planned",
                 f"{inc['seconds']:.1f}", f"{inc['driver_peak_rss_mib']:.0f}"])
    return _table(["planning", "images", "seconds", "driver peak RSS MiB"], rows)


def label_scale() -> str:
    rows = []
    for name in ("job_scale_label.json", "job_scale_label_1024.json", "job_scale_cluster.json",
                 "job_scale_label_tiny.json"):
        for r in _load(name)["results"]:
            rows.append([f"{r['n']:,}", r["shard_size"], r["stage"], r["nodes"], f"{r['images_per_second']:,.0f}",
                         f"{r['driver_cpu_ms_per_row']:.3f}", f"{r['driver_peak_rss_mib']:.0f}", f"`{name}`"])
    b = _load("job_scale_baseline.json")
    rows.append([f"{b['images']:,}", b["shard_size"], f"stand-in, old code {b['old_commit']}", 1,
                 f"{b['old']['images_per_second']:,.0f}", "–", f"{b['old']['driver_peak_rss_mib']:.0f}",
                 "`job_scale_baseline.json`"])
    return _table(["images", "shard size", "stage", "nodes", "images/s", "driver CPU ms/row", "driver peak RSS MiB",
                   "file"], rows)


def label_options() -> str:
    d = _load("label_options.json")
    seg = d["median_segment_ms"]
    rows = [["segment stage", f"{seg:,.0f}", "–"],
            ["segment stage with the per-pixel confidence", f"{d['median_segment_with_confidence_ms']:,.0f}", "–"]]
    rows += [[f"encode, {k}", f"{v:.2f}", f"{100 * v / seg:.2f} %"] for k, v in d["median_encode_ms"].items()]
    return _table(["per image (median of the sample images)", "ms", "next to the segment stage"], rows)


def suite() -> str:
    """``bench/test_suite.py --checkout``: the README's test command of the checkout (before), then of this code."""
    d = _load("test_suite.json")
    rows = []
    for name, label in (("before", "before"), ("after", "after"), ("unit_tier", "after, unit tier alone")):
        if name not in d:
            continue
        r = d[name]
        t = r["tests"]
        rows.append([label, f"`{r['commit']}`", r["workers"] or "1 process", t["passed"], t["failed"] + t["error"],
                     f"{r['seconds']:.0f}", f"{r['command_seconds']:.0f}", f"{r['test_seconds_sum']:.0f}",
                     r["load_average_before"][0]])
    table = _table(["run", "commit", "pytest workers", "passed", "failed", "pytest s (`N passed in S`)",
                    "whole command s", "sum of test s", "load avg at start"], rows)
    slow = "; ".join(f"{x['test'].split('::')[-1]} {x['seconds']:.0f} s" for x in d["after"]["slowest_15"][:6])
    return table + f"\n\nSlowest tests of the `after` run (setup + call + teardown, on a busy worker): {slow}."


RENDERERS: Dict[str, Callable[[], str]] = {
    "index": index, "core": core, "bf16": bf16, "job": job, "decode": decode, "plan": plan,
    "label-scale": label_scale, "label-options": label_options, "startup": startup, "noop": noop,
    "suite": suite,
}


def render(text: str) -> str:
    """``text`` with every generated block replaced by its renderer's table (unknown names are an error)."""
    def fill(m: "re.Match[str]") -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise SystemExit(f"error: docs/performance.md names an unknown table {name!r} "
                             f"(known: {', '.join(sorted(RENDERERS))})")
        return m.group(1) + RENDERERS[name]() + "\n" + m.group(4)
    return BLOCK.sub(fill, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a block is out of date")
    a = ap.parse_args(argv)
    old = DOC.read_text()
    new = render(old)
    if a.check:
        stale = [m.group("name") for m, n in zip(BLOCK.finditer(old), BLOCK.finditer(new))
                 if m.group("body") != n.group("body")]
        if stale:
            print(f"docs/performance.md is out of date in: {', '.join(stale)}; run scripts/perf_doc.py")
            return 1
        return 0
    if new != old:
        DOC.write_text(new)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
