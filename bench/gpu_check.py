"""One command that measures a GPU actor (issue 21): parity, precision, throughput, memory, faults, the job.

    .venv/bin/python bench/gpu_check.py                       # on a GPU: ViT-B/16, ≤ 6 min on one H100
    .venv/bin/python bench/gpu_check.py --device cpu --small  # smoke run on a CPU (tiny sizes, minutes)

Random ViT-B/16 weights (no download). The text side is made non-degenerate by drawing the query embeddings from the
images' own patch features (``pipeline.method.probe``), so every image gets several labels with real margins.
Sections (each one's error, if any, is recorded and the others still run):

* ``env``: torch, CUDA, driver, GPU name, CPU flags.
* ``parity``: the CPU kernel path (fp32, C++ kernel) vs the device path (fp32) on the same weights and text: label
  agreement overall and where the fp32 top-2 class-probability margin ≥ 1e-3, max |Δ prob|, SFR patch labels equal.
* ``precision``: bf16 / fp16 (and tf32 on CUDA) vs fp32 on the device: agreement overall and away from near-ties,
  NaN/inf in the probabilities, the largest |attention logit| of the last block.
* ``throughput``: segmenter images/s for a whole-image preset (voc21) and a sliding preset (ade20k) × dtype × images
  per call; the share of wall time after the forward; peak GPU memory; ResCLIP time vs the bare trunk's per image.
* ``trunk``: trunk-only TFLOP/s at a large batch against a measured bf16/fp16 matmul peak.
* ``oom``: a forced CUDA out-of-memory: its class (``jobs.devices.fault_kind``) and that the same segmenter then
  labels one image after ``empty_cache`` (CUDA only).
* ``job``: ``python -m jobs.label`` images/s on generated images with ``--gpus-per-actor 1`` (CPU: 0).

Writes ``bench/results/gpu_check_<device>.json`` (``--out`` to change) and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
from PIL import Image

from pipeline import ModelConfig, get_preset
from pipeline.method.dense import base_logits, embed, last_block_inputs, trunk
from pipeline.method.preprocess import normalise, resize_for_config
from pipeline.method.probe import patch_feature_text
from pipeline.method.sfr import preliminary_labels
from pipeline.model.text import TextEmbeddings
from pipeline.segmenter import Segmenter

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = REPO / "pipeline" / "data" / "samples"
TINY = REPO / "tests" / "data" / "tiny-vit.json"
NEAR_TIE = 1e-3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, device: torch.device, repeat: int = 1) -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / repeat


def _images(n: int, small: bool) -> List[np.ndarray]:
    files = sorted(SAMPLES.glob("*.jpg"))
    out = []
    for i in range(n):
        img = Image.open(files[i % len(files)]).convert("RGB")
        if small:
            img = img.resize((img.width // 4, img.height // 4))
        out.append(np.asarray(img))
    return out


def env_info(device: torch.device) -> Dict[str, Any]:
    info: Dict[str, Any] = dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                                machine=platform.machine(), device=str(device))
    flags = set()
    try:
        flags = set(next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        pass
    info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    info["cpu_count"] = os.cpu_count()
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}")
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info["driver"] = f"unknown ({e})"
    return info


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.arch = str(TINY) if args.small else args.arch
        self.images = _images(args.images, args.small)
        self.vocab = self._vocab_file(args.queries)

    def _vocab_file(self, q: int) -> str:
        d = pathlib.Path(tempfile.mkdtemp(prefix="gpu_check_"))
        (d / "vocab.txt").write_text("".join(f"class{i}\n" for i in range(q)))
        (d / "templates.txt").write_text("a photo of a {}.\n")
        self.templates = str(d / "templates.txt")
        return str(d / "vocab.txt")

    def segmenter(self, preset: str, device: str, dtype: str = "fp32", base: "Segmenter" = None,
                  **kw) -> Segmenter:
        """A segmenter on ``device``/``dtype``; with ``base``: the same weights and text (copied model)."""
        cfg = get_preset(preset, vocabulary=self.vocab, templates=self.templates, **kw)
        mc = ModelConfig(arch=self.arch, random_init=True, seed=0, dtype=dtype, device=device)
        if base is None:
            seg = Segmenter.build(cfg, mc)
            sample = torch.stack([normalise(resize_for_config(im, cfg, "sample")[:224, :224])
                                  for im in self.images[:2]]).to(seg.device)
            emb = patch_feature_text(seg.vision, sample.to(seg.dtype), seg.vocabulary.num_queries, seg.dense_params)
            te = seg.text
            text = TextEmbeddings(emb, te.query_names, te.query_to_class, te.class_names, te.key)
            return Segmenter(cfg, mc, seg.model, seg.weights_digest, seg.vocabulary, text)
        from pipeline.model.clip import TORCH_DTYPES, set_matmul_precision

        set_matmul_precision(torch.device(device), dtype)
        model = copy.deepcopy(base.model).to(device=device, dtype=TORCH_DTYPES[dtype])
        return Segmenter(cfg, dataclasses.replace(mc), model, base.weights_digest, base.vocabulary, base.text)

    # ---- sections ------------------------------------------------------------------------------
    def parity(self) -> Dict[str, Any]:
        out = {}
        for preset in ("voc21", "ade20k"):
            os.environ.pop("RESLABEL_PAMR_KERNEL", None)
            cpu = self.segmenter(preset, "cpu")
            if self.device.type == "cpu":
                os.environ["RESLABEL_PAMR_KERNEL"] = "torch"  # the device path on CPU
            dev = self.segmenter(preset, str(self.device), base=cpu)
            assert dev.device_path and (self.device.type == "cpu" or not cpu.device_path)
            n = agree = far = far_agree = 0
            dprob = 0.0
            for img in self.images[: self.args.parity_images]:
                os.environ.pop("RESLABEL_PAMR_KERNEL", None)
                ref = cpu.segment([img], return_probs=True)[0]
                if self.device.type == "cpu":
                    os.environ["RESLABEL_PAMR_KERNEL"] = "torch"
                got = dev.segment([img], return_probs=True)[0]
                top2 = np.sort(ref.probs, axis=0)[-2:]
                clear = (top2[1] - top2[0]) >= NEAR_TIE
                same = got.labels == ref.labels
                n, agree = n + same.size, agree + int(same.sum())
                far, far_agree = far + int(clear.sum()), far_agree + int((same & clear).sum())
                dprob = max(dprob, float(np.abs(got.probs - ref.probs).max()))
            out[preset] = dict(pixels=n, agreement=agree / n, clear_pixels=far / n,
                               agreement_clear=far_agree / max(far, 1), max_abs_prob_diff=dprob,
                               labels_in_images=int(len(np.unique(ref.labels))), sfr_patch_labels=self._sfr(cpu, dev))
        os.environ.pop("RESLABEL_PAMR_KERNEL", None)
        return out

    def _sfr(self, cpu: Segmenter, dev: Segmenter) -> Dict[str, Any]:
        """SFR's preliminary patch labels from the same grid logits: CPU kernel vs torch on the device."""
        cfg = cpu.config
        x = normalise(resize_for_config(self.images[0], cfg, "s")[:224, :224])[None]  # (1, 3, 224, 224)
        p = cpu.dense_params
        ph, pw = cpu.vision.patch_size
        g = torch.Generator().manual_seed(0)
        grid = torch.randn(1, cpu.vocabulary.num_queries, 224 // ph, 224 // pw, generator=g)  # (1, Q, hp, wp)
        a = preliminary_labels(x, grid, p.sfr_pamr_steps, p.sfr_pamr_dilations, p.logit_scale, p.temp_thd,
                               cpu.vision.patch_size)
        b = preliminary_labels(x.to(dev.device), grid.to(dev.device), p.sfr_pamr_steps, p.sfr_pamr_dilations,
                               p.logit_scale, p.temp_thd, cpu.vision.patch_size, native=False).cpu()
        return dict(patches=a.numel(), equal=float((a == b).float().mean()))

    def precision(self) -> Dict[str, Any]:
        ref = self.segmenter("ade20k", str(self.device))
        dtypes = ["bf16", "fp16"] + (["tf32"] if self.device.type == "cuda" else [])
        refs = [ref.segment([im], return_probs=True)[0] for im in self.images[: self.args.parity_images]]
        out: Dict[str, Any] = {"fp32_max_attention_logit": self._max_logit(ref)}
        for dt in dtypes:
            seg = self.segmenter("ade20k", str(self.device), dt, base=ref)
            n = agree = far = far_agree = bad = 0
            for im, r in zip(self.images, refs):
                g = seg.segment([im], return_probs=True)[0]
                bad += int((~np.isfinite(g.probs)).sum())
                top2 = np.sort(r.probs, axis=0)[-2:]
                clear = (top2[1] - top2[0]) >= NEAR_TIE
                same = g.labels == r.labels
                n, agree = n + same.size, agree + int(same.sum())
                far, far_agree = far + int(clear.sum()), far_agree + int((same & clear).sum())
            out[dt] = dict(agreement=agree / n, agreement_clear=far_agree / max(far, 1), nonfinite_probs=bad,
                           max_attention_logit=self._max_logit(seg))
        return out

    def _max_logit(self, seg: Segmenter) -> float:
        x = normalise(resize_for_config(self.images[0], seg.config, "s")[:224, :224])[None].to(seg.device, seg.dtype)
        with torch.inference_mode():
            tokens, _ = embed(seg.vision, x)
            x11, _ = trunk(seg.vision, tokens, ())
            q, k, v = last_block_inputs(seg.vision, x11, seg.dense_params)
            logits = base_logits(seg.dense_params.variant.base, q, k, v.shape[-1] ** -0.5)
        return max(float(lg.float().abs().max()) for lg in logits)

    def throughput(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        dtypes = ["fp32", "bf16", "fp16"] if self.device.type == "cuda" else ["fp32"]
        batches = self.args.batches
        if self.device.type == "cpu":
            os.environ["RESLABEL_PAMR_KERNEL"] = "torch"  # time the device path
        base = None
        for preset in ("voc21", "ade20k"):
            for dt in dtypes:
                seg = self.segmenter(preset, str(self.device), dt, base=base) if base else \
                    self.segmenter(preset, str(self.device))
                base = base or seg
                for b in batches:
                    imgs = (self.images * (b // len(self.images) + 1))[:b]
                    out[f"{preset}/{dt}/b{b}"] = self._time_segmenter(seg, imgs)
        os.environ.pop("RESLABEL_PAMR_KERNEL", None)
        out["resclip_vs_trunk"] = self._vs_trunk(base)
        return out

    def _time_segmenter(self, seg: Segmenter, imgs: Sequence[np.ndarray]) -> Dict[str, Any]:
        resized = [resize_for_config(im, seg.config, "i") for im in imgs]
        sizes = [im.shape[:2] for im in imgs]
        forward = [0.0]
        inner = seg._group_logits

        def timed_group(x):
            _sync(seg.device)
            t = time.perf_counter()
            r = inner(x)
            _sync(seg.device)
            forward[0] += time.perf_counter() - t
            return r
        seg.segment_prepared(resized[:1], sizes[:1])  # warm-up (kernels, caches)
        if seg.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(seg.device)
        seg._group_logits = timed_group
        try:
            wall = _timed(lambda: seg.segment_prepared(resized, sizes), seg.device, self.args.repeat)
        finally:
            del seg._group_logits
        res = dict(images=len(imgs), images_per_s=len(imgs) / wall, wall_s=wall,
                   after_forward_share=max(0.0, 1 - forward[0] / self.args.repeat / wall))
        if seg.device.type == "cuda":
            res["peak_gpu_mib"] = torch.cuda.max_memory_allocated(seg.device) / 2 ** 20
        return res

    def _vs_trunk(self, seg: Segmenter) -> Dict[str, Any]:
        """ResCLIP's per-crop forward vs the bare visual trunk (open_clip's own forward), same batch of 224 crops."""
        out = {}
        for dt in (["bf16", "fp16"] if self.device.type == "cuda" else ["fp32"]):
            s = self.segmenter("ade20k", str(self.device), dt, base=seg)
            x = torch.randn(self.args.trunk_batch, 3, 224, 224, device=s.device, dtype=s.dtype)
            with torch.inference_mode():
                from pipeline.method.dense import crop_logits

                bare = _timed(lambda: s.model.visual(x), s.device, self.args.repeat)
                full = _timed(lambda: crop_logits(s.vision, x, s._text, s.dense_params), s.device, self.args.repeat)
            out[dt] = dict(batch=self.args.trunk_batch, queries=s.vocabulary.num_queries, bare_s=bare, resclip_s=full,
                           ratio=full / bare)
        return out

    def trunk(self) -> Dict[str, Any]:
        dt = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        n = 8192 if self.device.type == "cuda" else 1024
        a = torch.randn(n, n, device=self.device, dtype=dt)
        mm = _timed(lambda: a @ a, self.device, 3)
        peak = 2 * n ** 3 / mm / 1e12
        seg = self.segmenter("ade20k", str(self.device), "bf16" if dt == torch.bfloat16 else "fp32")
        vp = seg.vision
        b = self.args.trunk_batch
        x = torch.randn(b, 3, 224, 224, device=seg.device, dtype=seg.dtype)
        with torch.inference_mode():
            def run():
                tokens, _ = embed(vp, x)
                trunk(vp, tokens, ())
            run()
            t = _timed(run, seg.device, self.args.repeat)
        width = vp.blocks[0].ln_1.normalized_shape[0]
        layers = len(vp.blocks) - 1
        tokens = 1 + (224 // vp.patch_size[0]) * (224 // vp.patch_size[1])
        macs = layers * (12 * tokens * width ** 2 + 2 * tokens ** 2 * width)  # qkv+out (4D²), MLP (8D²), QKᵀ and AV
        tflops = 2 * macs * b / t / 1e12
        return dict(dtype=str(dt), matmul_n=n, matmul_peak_tflops=peak, trunk_batch=b, trunk_s=t,
                    trunk_tflops=tflops, share_of_peak=tflops / peak)

    def oom(self) -> Dict[str, Any]:
        if self.device.type != "cuda":
            return dict(skipped="needs CUDA (the fault path itself is tested on CPU: tests/test_gpu_actor.py)")
        from jobs.devices import fault_kind

        seg = self.segmenter("ade20k", "cuda")
        free, _ = torch.cuda.mem_get_info()
        try:
            hog = torch.empty(int(free * 0.97), dtype=torch.uint8, device="cuda")  # leave too little for a batch
            try:
                seg.segment(self.images[:8])
                kind, message = None, "no OOM"
            except Exception as e:  # noqa: BLE001 - recorded
                kind, message = fault_kind(e), f"{type(e).__name__}: {str(e)[:200]}"
            del hog
        finally:
            torch.cuda.empty_cache()
        ok = len(seg.segment(self.images[:1])) == 1
        return dict(fault_kind=kind, message=message, one_image_after_empty_cache=ok)

    def job(self) -> Dict[str, Any]:
        d = pathlib.Path(tempfile.mkdtemp(prefix="gpu_check_job_"))
        (d / "in").mkdir()
        rng = np.random.RandomState(0)
        for i in range(self.args.job_images):
            Image.fromarray(self.images[i % len(self.images)]).save(d / "in" / f"{i:04d}.jpg")
        del rng
        gpus = "1" if self.device.type == "cuda" else "0"
        args = [sys.executable, "-m", "jobs.label", "--input", str(d / "in"), "--output", str(d / "out"),
                "--preset", "ade20k", "--model", self.arch, "--random-weights", "--vocabulary", self.vocab,
                "--templates", self.templates, "--gpus-per-actor", gpus, "--shard-size", "64"]
        t = time.perf_counter()
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=self.args.job_timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = time.perf_counter() - t
        runs = list((d / "out" / "runs").glob("*/_SUCCESS.json"))
        if proc.returncode != 0 or not runs:
            return dict(rc=proc.returncode, log_tail=(proc.stdout + proc.stderr)[-1500:])
        s = json.loads(runs[0].read_text())
        return dict(images=s["rows"], by_status=s["by_status"], images_per_s=s["attempt"]["images_per_second"],
                    label_seconds=s["attempt"]["label_seconds"], wall_s=wall, devices=s["attempt"].get("devices"))


def _table(result: Dict[str, Any]) -> str:
    lines = [f"{'section/metric':58s} value"]

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}/{k}" if prefix else str(k), x)
        elif isinstance(v, float):
            lines.append(f"{prefix:58s} {v:.4g}")
        elif not isinstance(v, list) or len(v) < 8:
            lines.append(f"{prefix:58s} {v}")
    walk("", {k: v for k, v in result.items() if k != "env"})
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="tiny model and images (CPU smoke run)")
    p.add_argument("--arch", default="ViT-B-16")
    p.add_argument("--queries", type=int, default=150)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--parity-images", type=int, default=4)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--trunk-batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--job-images", type=int, default=256)
    p.add_argument("--job-timeout", type=int, default=150)
    p.add_argument("--sections", nargs="+", default=["parity", "precision", "throughput", "trunk", "oom", "job"])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.small:
        a.queries, a.images, a.parity_images = min(a.queries, 6), min(a.images, 2), min(a.parity_images, 1)
        a.batches, a.trunk_batch, a.repeat, a.job_images = [1, 2], 2, 1, min(a.job_images, 4)
    torch.manual_seed(0)
    bench = Bench(a)
    result: Dict[str, Any] = dict(env=env_info(bench.device), args=vars(a))
    for name in a.sections:
        t = time.perf_counter()
        try:
            result[name] = getattr(bench, name)()
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others' numbers
            result[name] = dict(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:])
        result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t, 1)
        print(f"[{name}] {result['section_seconds'][name]} s", flush=True)
    out = pathlib.Path(a.out or REPO / "bench" / "results" / f"gpu_check_{bench.device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(_table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
