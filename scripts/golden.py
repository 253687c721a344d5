"""Behaviour snapshot for refactors: save the outputs of a fixed set of cases, then compare after a change.

    .venv/bin/python scripts/golden.py save /tmp/golden-before     # before moving code
    .venv/bin/python scripts/golden.py compare /tmp/golden-before  # after: bit-identical or a list of differences

Cases (tiny random ViT of tests/data/tiny-vit.json, fp32, one torch thread, fixed seeds):
* every variant (4 methods x 4 bases) on a sliding-window frame: ``dense_logits`` and the labels/probabilities
  of ``segment``;
* every preset frame kind: ResCLIP frame whole image (voc21) and sliding (context60), each base's own frame
  (method none: NACLIP with final PAMR, SCLIP direct resize, ClearCLIP padded 448 crops), Cityscapes' 560 side;
* every input kind through the labeling job on a local Ray (an image folder with every bad-input status, an
  img2dataset Parquet, WebDataset tars, a CSV manifest with a missing file): the committed rows, without the
  fields that name the run or the time (run_id, labeled_at, code_version).
Compares exactly (``torch.equal``, ``==`` on rows); the run hash fields are compared too (``config_hash`` of
older snapshots is matched with ``job_hash``).
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import pickle
import re
import shutil
import sys
import tempfile
from typing import Any, Dict

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOLATILE = ("run_id", "labeled_at", "code_version")
RENAMED = {"config_hash": "job_hash"}  # rows: older snapshots' names -> current names
ADDED = {"segmenter_hash", "instance_id", "ignore"}  # row fields older snapshots lack (schema 2.0, 2.1)
WORK = pathlib.Path(tempfile.gettempdir()) / "reslabel-golden"  # fixed: paths are in the rows and the hashes


def _segmenter_cases(weights: str, vocab: str, templates: str) -> Dict[str, Any]:
    import numpy as np
    import torch

    from pipeline import ModelConfig, Segmenter, get_preset
    from pipeline.method.variants import BASES, METHODS
    torch.set_num_threads(1)
    mc = ModelConfig(arch=str(WORK / "tiny-vit.json"), weights=weights)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(150, 230, 3), dtype=np.uint8)
    frames = {f"{m}/{b}/context60": ("context60", m, b, {}) for m in METHODS for b in BASES}
    frames.update({
        "resclip/naclip/voc21-whole": ("voc21", "resclip", "naclip", {}),
        "none/naclip/voc21-pamr": ("voc21", "none", "naclip", {}),
        "none/sclip/voc21": ("voc21", "none", "sclip", {}),
        "none/sclip/coco_stuff": ("coco_stuff", "none", "sclip", {}),
        "none/clearclip/voc21": ("voc21", "none", "clearclip", {}),
        "none/clearclip/cityscapes": ("cityscapes", "none", "clearclip", {}),
        "resclip/naclip/cityscapes": ("cityscapes", "resclip", "naclip", {}),
        "resclip/naclip/voc20-prob": ("voc20", "resclip", "naclip", {"prob_thd": 0.3, "area_thd": 0.05}),
    })
    out: Dict[str, Any] = {}
    for name, (preset, method, base, extra) in frames.items():
        cfg = get_preset(preset, method=method, base=base, vocabulary=vocab, templates=templates, **extra)
        seg = Segmenter.build(cfg, mc)
        from pipeline.method.preprocess import normalise, resize_for_config

        x = normalise(resize_for_config(image, cfg, "golden"))[None]
        res = seg.segment([image], return_probs=True)[0]
        prov = {("segmenter_hash" if k == "config_hash" else k): v for k, v in seg.provenance().items()}
        out[name] = {"dense_logits": seg.dense_logits(x), "labels": res.labels, "probs": res.probs,
                     "provenance": {k: v for k, v in prov.items() if k not in VOLATILE}}
        print(f"  {name}: logits {tuple(out[name]['dense_logits'].shape)}", flush=True)
    return out


def _job_cases(weights: str, vocab: str, templates: str, work: pathlib.Path) -> Dict[str, Any]:
    import ray

    from tests.job_fixtures import MAX_PIXELS, committed_rows, run_cli, sample_files
    from tests.test_job_inputs import write_img2dataset, write_webdataset

    files = {n: data for n, (data, _) in sample_files().items()}
    ok_files = {n: d for n, (d, s) in sample_files().items() if s == "ok"}
    (work / "images").mkdir()
    for n, data in files.items():
        (work / "images" / n).write_bytes(data)
    (work / "manifest.csv").write_text("uri,id\n" + "".join(f"images/{n},id-{n}\n" for n in files)
                                       + "images/gone.jpg,id-gone\n")
    inputs = {"images": (work / "images", "images"), "parquet": (write_img2dataset(work / "pq", ok_files), "parquet"),
              "webdataset": (write_webdataset(work / "wds", ok_files), "webdataset"),
              "manifest": (work / "manifest.csv", "manifest")}
    args = ["--preset", "voc21", "--model", str(work / "tiny-vit.json"), "--weights", weights, "--vocabulary", vocab,
            "--templates", templates, "--max-pixels", str(MAX_PIXELS), "--shard-size", "4", "--read-threads", "4"]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    try:
        for kind, (src, fmt) in inputs.items():
            for variant in (["--method", "resclip"], ["--method", "none", "--base", "sclip"]):
                target = work / f"out-{kind}-{variant[1]}"
                run_cli(["--input", str(src), "--output", str(target), "--input-format", fmt, *variant, *args])
                rows = sorted(committed_rows(str(target)), key=lambda r: r["image_id"])
                out[f"{kind}/{'-'.join(variant[1::2])}"] = [{k: v for k, v in r.items() if k not in VOLATILE}
                                                            for r in rows]
                print(f"  job {kind} {variant}: {len(rows)} rows", flush=True)
    finally:
        ray.shutdown()
    return out


def snapshot() -> Dict[str, Any]:
    import torch

    from tests.conftest import TINY_ARCH, make_openclip_model

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    try:
        work = WORK
        weights = work / "tiny.pt"
        torch.save(make_openclip_model(TINY_ARCH).state_dict(), weights)
        shutil.copy(TINY_ARCH, work / "tiny-vit.json")  # the architecture's path is part of the hashes
        (work / "vocab.txt").write_text("background\nsky, wall, tree\ncat\ndog, puppy\nperson\n")
        (work / "templates.txt").write_text("a photo of a {}.\na bad photo of the {}.\n")
        paths = [str(weights), str(work / "vocab.txt"), str(work / "templates.txt")]
        print("segmenter cases", flush=True)
        seg = _segmenter_cases(*paths)
        print("job cases", flush=True)
        job = _job_cases(*paths, work)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    return {"segmenter": seg, "job": job}


def _diff(a: Any, b: Any, where: str, out: list) -> None:
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            out.append(f"{where}: tensors differ")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b)):
            out.append(f"{where}: arrays differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        a = {RENAMED.get(k, k): v for k, v in a.items()}
        b = {RENAMED.get(k, k): v for k, v in b.items()}
        for k in sorted(set(a) | set(b), key=str):
            if k not in a and k in ADDED:
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k not in a else 'before'}")
            else:
                _diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out)
    elif a != b:
        out.append(f"{where}: {a!r} != {b!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("save", "compare"))
    p.add_argument("dir", help="where the snapshot is saved / read (outside the repository)")
    args = p.parse_args(argv)
    path = pathlib.Path(args.dir) / "golden.pkl"
    now = snapshot()
    if args.action == "save":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(now))
        print(f"saved {len(now['segmenter'])} segmenter cases and {len(now['job'])} job cases to {path}")
        return 0
    before = pickle.loads(path.read_bytes())
    problems: list = []
    _diff(before, now, "golden", problems)
    for line in problems[:50]:
        print(line)
    by_field = collections.Counter(re.sub(r"\[\d+\]", "[]", line.split(":")[0]) for line in problems)
    for field, count in sorted(by_field.items()):
        print(f"{count:6d} x {field}")
    print(f"{len(problems)} differences over {len(now['segmenter'])} segmenter and {len(now['job'])} job cases")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
