"""Benchmark: labeling-job throughput vs the in-process segmenter on the same images, and peak memory.

    .venv/bin/python bench/job_throughput.py --sizes 16 64 --arch tiny        # seconds
    .venv/bin/python bench/job_throughput.py --sizes 32 128 --arch ViT-B-16   # minutes on 2 CPUs

For each dataset size N: the job runs as ``python -m jobs.label`` in a subprocess with its own local Ray
(wall time, label-phase images/s from ``_SUCCESS.json``, and the peak summed RSS of the driver and every
Ray process it started, sampled from /proc every 0.2 s; shared object-store pages are counted once per
process, so this over-estimates). The in-process baseline decodes and segments the same N images in
this process with the same torch thread count as one actor. Weights are random (no download): speed
and memory do not depend on the values. Two ratios per job: label-phase images/s over in-process images/s (the
label phase starts when the driver first hands out shards) and in-process seconds over the job's whole wall time.
With ``--checkout DIR`` the job of DIR's code runs too, on the same images right after (``job_before``), so a
change is measured before and after in one run. Prints one JSON object; ``--out FILE`` also writes it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_images(d: pathlib.Path, n: int, size=(320, 240)) -> None:
    """``n`` JPEGs cycled from scikit-image's sample photos (real content), ``size`` = (w, h)."""
    import skimage.data
    from PIL import Image

    photos = [getattr(skimage.data, k)() for k in ("astronaut", "coffee", "chelsea", "rocket")]
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(photos[i % len(photos)]).resize(size).save(d / f"img{i:05d}.jpg", quality=90)


def cpu_flags() -> List[str]:
    """The vector-ISA flags of this CPU that decide fp32/bf16 speed (AVX2, FMA, AVX-512*, AMX*)."""
    text = pathlib.Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))


def make_weights(arch: str, path: pathlib.Path) -> str:
    """Random OpenAI-format weights for ``arch``; returns the arch argument for ``--model``."""
    import open_clip
    import torch

    from pipeline.model.clip import resolve_arch

    arch_arg = str(ROOT / "tests" / "data" / "tiny-vit.json") if arch == "tiny" else arch
    torch.manual_seed(0)
    model = open_clip.create_model(resolve_arch(arch_arg), pretrained=None, force_quick_gelu=True)
    torch.save(model.state_dict(), path)
    return arch_arg


def _tree_rss(root: int) -> int:
    """Summed VmRSS (bytes) of ``root`` and all its descendants, from /proc."""
    parents: Dict[int, int] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    parents[int(p)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        kids = [c for c, pp in parents.items() if pp in frontier and c not in tree]
        tree.update(kids)
        frontier = kids
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def run_job(args: List[str], code: pathlib.Path = ROOT) -> Dict:
    """Run the CLI of the checkout ``code`` in a subprocess; returns wall seconds and peak tree RSS."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(code)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.label", *args], cwd=code, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}):\n{out[-3000:]}")
    return dict(wall_seconds=round(time.perf_counter() - t0, 2), peak_rss_gib=round(peak[0] / 2**30, 3))


def in_process(images: pathlib.Path, job_args: List[str], threads: int) -> Dict:
    """Decode + segment every image in this process (one Segmenter, ``threads`` torch threads)."""
    import torch

    from jobs.label import config_from_args
    from pipeline.io.decode import decode_image
    from pipeline.labels.segments import segments_from_labels
    from pipeline.segmenter import Segmenter

    cfg = config_from_args(["--input", str(images), "--output", "unused", *job_args])
    torch.set_num_threads(threads)
    seg = Segmenter.build(cfg.segmenter_config(), cfg.model_config())
    files = sorted(images.iterdir())
    t0 = time.perf_counter()
    per_call = cfg.images_per_call or 4  # the CPU actor's default
    for i in range(0, len(files), per_call):
        batch = [decode_image(p.read_bytes()).image for p in files[i:i + per_call]]
        for res in seg.segment(batch):
            segments_from_labels(res.labels, seg.class_names, res.class_scores)
    dt = time.perf_counter() - t0
    return dict(seconds=round(dt, 2), images_per_second=round(len(files) / dt, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[16, 64], help="two dataset sizes (images)")
    ap.add_argument("--arch", default="tiny", help="tiny (tests/data/tiny-vit.json) or an open_clip name")
    ap.add_argument("--preset", default="voc21")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--cpus-per-actor", type=int, default=1)
    ap.add_argument("--images-per-call", type=int, default=4)
    ap.add_argument("--checkout", help="another checkout of reslabel whose job runs the same way, on the same images "
                                       "right after this one's (the 'before')")
    ap.add_argument("--out")
    a = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="reslabel-bench-"))
    arch = make_weights(a.arch, work / "weights.pt")
    common = ["--preset", a.preset, "--model", arch, "--weights", str(work / "weights.pt"), "--dtype", a.dtype,
              "--cpus-per-actor", str(a.cpus_per_actor), "--images-per-call", str(a.images_per_call),
              "--shard-size", "64"]
    report = dict(arch=a.arch, preset=a.preset, dtype=a.dtype, cpus_per_actor=a.cpus_per_actor,
                  cpu_count=os.cpu_count(), measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  machine=dict(cpu_flags=cpu_flags()),
                  runs=[])
    for n in a.sizes:
        images = work / f"images-{n}"
        make_images(images, n)
        ref = in_process(images, common, a.cpus_per_actor)
        entry = dict(images=n, in_process=ref)
        codes = [("job", ROOT)] + ([("job_before", pathlib.Path(a.checkout).resolve())] if a.checkout else [])
        for name, code in codes:
            out = work / f"out-{n}-{name}"
            job = run_job(["--input", str(images), "--output", str(out), "--run-id", "bench", *common], code)
            success = json.loads((out / "runs" / "bench" / "_SUCCESS.json").read_text())
            att = success["attempt"]
            breakdown = {k: att[k] for k in ("ray_start_seconds", "hash_seconds", "lease_seconds", "plan_seconds",
                                             "prepare_seconds", "label_seconds") if k in att}
            breakdown["outside_run_job_seconds"] = round(job["wall_seconds"] - att["wall_seconds"], 2)  # imports
            entry[name] = dict(job, label_images_per_second=att["images_per_second"], breakdown=breakdown,
                               text_embeddings=att.get("text_embeddings"),
                               stage_seconds_summed=success["stage_seconds_summed"])
            entry[f"ratio_{name}_over_in_process"] = round(att["images_per_second"] / ref["images_per_second"], 3)
            entry[f"ratio_{name}_wall_over_in_process"] = round(ref["seconds"] / job["wall_seconds"], 3)
        entry["ratio_job_over_in_process"] = entry.pop("ratio_job_over_in_process")
        report["runs"].append(entry)
        print(json.dumps(report["runs"][-1]), file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        pathlib.Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
