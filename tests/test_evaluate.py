"""Evaluation job: mmseg layouts, known mIoU by construction (incl. reduce_zero_label, ignore), bad GT,
and the in-process segmenter path agreeing with a stored run of the same labels."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from jobs.evaluate import main as evaluate_main
from pipeline.evaluation.benchmarks import BENCHMARKS, get_benchmark, list_pairs, load_gt
from pipeline.evaluation.metrics import IoUAccumulator, LabelError
from pipeline.labels.reader import open_run
from tests.consumer_fixtures import label_row, make_benchmark, write_run

VOC = get_benchmark("voc21")
ADE = get_benchmark("ade20k")


def _names(bench):
    return [f"c{i}" for i in range(bench.num_classes)]


def _run_for(tmp_path, bench, preds, images, **kw):
    rows = [label_row(stem, images[stem], pred, _names(bench), exclude=kw.pop("exclude", ()))
            for stem, pred in preds.items()]
    return write_run(str(tmp_path / "runs" / "r1"), rows, _names(bench), **kw)


def _report(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return json.load(f)


def test_every_benchmark_layout_lists_its_pairs(tmp_path):
    for name, bench in BENCHMARKS.items():
        stem = "frankfurt/frankfurt_000000_000294" if name == "cityscapes" else "2008_000009"
        make_benchmark(str(tmp_path / name), bench, {stem: np.zeros((4, 5), np.uint8)})
        [(s, img, gt)] = list_pairs(bench, str(tmp_path / name))
        assert s == stem and os.path.isfile(img) and os.path.isfile(gt)
        assert img.endswith(bench.img_suffix) and gt.endswith(bench.seg_suffix)
    assert {b.name for b in BENCHMARKS.values() if b.reduce_zero_label} == {"voc20", "context59", "ade20k"}
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        list_pairs(VOC, str(tmp_path / "nowhere"))


def test_reduce_zero_label_known_miou(tmp_path):
    # ADE20K on disk: 0 = other (ignored after reduction), k = class k-1
    gt = np.zeros((10, 10), np.uint8)
    gt[:, 2:6] = 1  # → class 0, 40 px
    gt[:, 6:] = 2  # → class 1, 40 px
    pred = np.full((10, 10), 7, np.int32)  # the disk-0 columns: whatever is predicted there is ignored
    pred[:, 2:6] = 0
    pred[:5, 6:] = 1
    pred[5:, 6:] = 5  # class 5 only predicted: IoU 0
    root = str(tmp_path / "ade")
    images = make_benchmark(root, ADE, {"ADE_val_00000001": gt})
    run_dir = _run_for(tmp_path, ADE, {"ADE_val_00000001": pred}, images)
    out = str(tmp_path / "report")
    assert evaluate_main(["--benchmark", "ade20k", "--data-root", root, "--run", run_dir, "--out-dir", out]) == 0
    rep = _report(out)
    iou = {c["index"]: c["IoU"] for c in rep["per_class"] if c["IoU"] is not None}
    assert iou == {0: 100.0, 1: 50.0, 5: 0.0}  # class 7 predicted only on ignored pixels: absent
    assert rep["mIoU"] == pytest.approx(50.0) and rep["aAcc"] == pytest.approx(100 * 60 / 80)
    assert rep["num_pixels"] == 80 and rep["reduce_zero_label"] is True
    md = open(os.path.join(out, "metrics.md")).read()
    assert "| 1 | 80 | 50.00 |" in md and "18.0" in md  # our row and the paper's ADE20K number


def test_voc21_ignore_border_and_dataset_accumulation(tmp_path):
    rng = np.random.default_rng(1)
    gts, preds = {}, {}
    for k in range(3):
        gt = rng.integers(0, 21, (12 + k, 15)).astype(np.uint8)
        gt[0, :] = 255  # VOC's object borders
        pred = gt.astype(np.int32).copy()
        pred[0, :] = 3  # predictions under 255 never count
        pred[1:4, :5] = (pred[1:4, :5] + 1) % 21  # some errors
        gts[f"2007_{k:06d}"], preds[f"2007_{k:06d}"] = gt, pred
    root = str(tmp_path / "voc")
    images = make_benchmark(root, VOC, gts)
    run_dir = _run_for(tmp_path, VOC, preds, images)
    out = str(tmp_path / "rep")
    assert evaluate_main(["--benchmark", "voc21", "--data-root", root, "--run", run_dir, "--out-dir", out]) == 0
    p = np.concatenate([preds[s].ravel() for s in sorted(gts)])
    g = np.concatenate([gts[s].ravel() for s in sorted(gts)])
    keep = g != 255
    expect = []
    for c in range(21):
        union = (((p == c) | (g == c)) & keep).sum()
        if union:
            expect.append(((p == c) & (g == c) & keep).sum() / union)
    assert _report(out)["mIoU"] == pytest.approx(100 * np.mean(expect))


def test_run_with_dropped_background_restores_it(tmp_path):
    gt = np.zeros((8, 8), np.uint8)
    gt[2:6, 2:6] = 15  # a person on background
    root = str(tmp_path / "voc")
    images = make_benchmark(root, VOC, {"2007_000001": gt})
    run_dir = _run_for(tmp_path, VOC, {"2007_000001": gt.astype(np.int32)}, images, exclude=(0,),
                       manifest_extra={"excluded_category_ids": [0]})
    assert open_run(run_dir).background_fill() == 0
    out = str(tmp_path / "rep")
    assert evaluate_main(["--benchmark", "voc21", "--data-root", root, "--run", run_dir, "--out-dir", out]) == 0
    rep = _report(out)
    assert rep["mIoU"] == 100.0 and rep["unlabeled_fill"] == 0


def test_bad_ground_truth_names_the_file(tmp_path, capsys):
    root = str(tmp_path / "voc")
    gt = np.zeros((6, 7), np.uint8)
    images = make_benchmark(root, VOC, {"a": gt})
    run_dir = _run_for(tmp_path, VOC, {"a": np.zeros((6, 8), np.int32)}, images)  # labelled at another size
    assert evaluate_main(["--benchmark", "voc21", "--data-root", root, "--run", run_dir]) == 2
    err = capsys.readouterr().err
    assert "SegmentationClass/a.png: ground truth is 7x6 (WxH) but its image is 8x6" in err
    gt_bad = gt.copy()
    gt_bad[0, 0] = 40
    make_benchmark(str(tmp_path / "voc2"), VOC, {"a": gt_bad})
    with pytest.raises(LabelError, match=r"voc2/SegmentationClass/a.png: label values \[40\]"):
        load_gt(VOC, str(tmp_path / "voc2" / "SegmentationClass" / "a.png"))
    with pytest.raises(LabelError, match=r"a.png: label values \[151\]"):  # ADE disk values go to 150
        make_benchmark(str(tmp_path / "ade"), ADE, {"a": np.full((2, 2), 151, np.uint8)})
        load_gt(ADE, str(tmp_path / "ade" / "annotations" / "validation" / "a.png"))


def test_segmenter_path_matches_stored_run(tmp_path, tiny_arch, tiny_weights, tiny_templates_file):
    """Evaluate with the in-process segmenter, then store its labels as a run: both reports agree, and the
    reader's label maps equal the segmenter's."""
    from skimage import data

    from pipeline import ModelConfig, get_preset
    from pipeline.segmenter import Segmenter
    from tests.consumer_fixtures import save_png

    root = str(tmp_path / "voc")
    pics = {"astro": data.astronaut()[::6, ::5], "coffee": data.coffee()[::5, ::6]}
    gts = {k: np.random.default_rng(0).integers(0, 21, v.shape[:2]).astype(np.uint8) for k, v in pics.items()}
    make_benchmark(root, VOC, gts)
    for k, v in pics.items():  # real photos instead of noise
        save_png(os.path.join(root, VOC.img_dir, k + VOC.img_suffix), v)
    sets = ["resize_short=112", f"templates={tiny_templates_file}"]
    common = ["--benchmark", "voc21", "--data-root", root]
    out1 = str(tmp_path / "seg")
    assert evaluate_main(common + ["--model", tiny_arch, "--weights", tiny_weights, "--set", *sets,
                                   "--out-dir", out1]) == 0
    cfg = dataclasses.replace(get_preset("voc21"), resize_short=112, templates=tiny_templates_file)
    seg = Segmenter.build(cfg, ModelConfig(arch=tiny_arch, weights=tiny_weights))
    results = {k: seg.segment([v])[0] for k, v in pics.items()}
    acc = IoUAccumulator(seg.class_names)
    rows = []
    for k, r in results.items():
        acc.update(r.labels, gts[k])
        rows.append(label_row(k, os.path.join(root, VOC.img_dir, k + VOC.img_suffix), r.labels, seg.class_names))
    assert _report(out1)["mIoU"] == pytest.approx(acc.scores()["mIoU"])
    run_dir = write_run(str(tmp_path / "runs" / "seg"), rows, seg.class_names)
    for row, lab in open_run(run_dir).label_maps():
        np.testing.assert_array_equal(lab, results[row["image_id"]].labels)
    out2 = str(tmp_path / "run")
    assert evaluate_main(common + ["--run", run_dir, "--out-dir", out2]) == 0
    assert _report(out2)["per_class"] == _report(out1)["per_class"]
