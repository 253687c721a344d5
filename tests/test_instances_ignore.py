"""Instances (``--instances``) and ignore regions (``--ignore-below``): the segment arithmetic on known maps, then
a real job run whose rows, COCO export (read by pycocotools), PNG export, reader and torch Dataset agree."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from pipeline.config import ConfigError
from pipeline.labels.reader import ignore_mask, label_map, open_run
from pipeline.labels.rle import decode_rle
from pipeline.labels.segments import row_segments, segments_from_labels
from schemas import LABEL_SCHEMA, make_row
from tests.consumer_fixtures import synthetic_run

NAMES = ["background", "cat", "dog"]


def _maps():
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 2:8] = 1  # cat, 24 px
    labels[10:18, 20:28] = 1  # another cat, 64 px
    labels[12:13, 3:5] = 1  # a 2-pixel cat
    labels[8:16, 8:14] = 2  # dog, 48 px
    rng = np.random.default_rng(0)
    label_probs = rng.uniform(0.3, 1.0, labels.shape).astype(np.float32)
    confidence = label_probs.copy()
    confidence[0:2, :] = 0.1  # two low-confidence rows (background)
    confidence[10, 20:28] = 0.2  # and the first row of the big cat
    return labels, label_probs, confidence


def test_instances_are_connected_components_with_their_own_scores():
    labels, probs, conf = _maps()
    segs, ignore = row_segments(labels, NAMES, exclude=[0], label_probs=probs, confidence=conf, instances=True)
    assert ignore is None
    assert [(s["category_name"], s["instance_id"], s["area"]) for s in segs] == [
        ("cat", 1, 24), ("cat", 2, 64), ("cat", 3, 2), ("dog", 4, 48)]  # class, then raster order
    for s in segs:
        m = decode_rle(s["rle"]).astype(bool)
        assert m.sum() == s["area"] and s["score"] == pytest.approx(float(probs[m].mean()), rel=1e-6)
        ys, xs = np.nonzero(m)
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    big = row_segments(labels, NAMES, exclude=[0], label_probs=probs, confidence=conf, instances=True,
                       min_instance_area=3)[0]
    assert [s["area"] for s in big] == [24, 64, 48] and [s["instance_id"] for s in big] == [1, 2, 3]


def test_ignore_regions_leave_every_segment():
    labels, probs, conf = _maps()
    segs, ignore = row_segments(labels, NAMES, label_probs=probs, confidence=conf, ignore_below=0.25)
    ign = decode_rle(ignore).astype(bool)
    assert np.array_equal(ign, conf < 0.25) and ign.sum() == 2 * 30 + 8
    covered = np.zeros(labels.shape, int)
    for s in segs:
        m = decode_rle(s["rle"]).astype(bool)
        covered += m
        assert s["instance_id"] is None and not (m & ign).any()
        assert s["score"] == pytest.approx(float(probs[m].mean()), rel=1e-6)
    assert np.array_equal(covered == 1, ~ign) and covered.max() == 1  # every other pixel in exactly one segment
    # no option: the semantic segments of before, no ignore region
    plain, none = row_segments(labels, NAMES, np.full(3, 0.5, np.float32), label_probs=probs, confidence=conf)
    assert none is None and plain == segments_from_labels(labels, NAMES, np.full(3, 0.5, np.float32))
    # the reader: 255 in the ignore region whatever the fill
    row = make_row(image_id="a", source_uri="/a.png", width=30, height=20, status="ok", segments=segs, ignore=ignore,
                   method="m", base="b", preset="p", model="x", weights_digest="w", vocabulary_hash="v",
                   segmenter_hash="s", job_hash="j", code_version="0", run_id="r",
                   labeled_at=np.datetime64("2026-12-02T00:00:00", "us").astype(object))
    lab = label_map(row, fill=0)
    assert (lab[ign] == 255).all() and np.array_equal(lab[~ign], labels[~ign])
    assert np.array_equal(ignore_mask(row), ign)
    with pytest.raises(ValueError, match="ignore region"):
        make_row(**{**row, "status": "decode_error", "error": "x", "segments": []})


def test_schema_2_0_runs_read_without_instances_or_ignore(tmp_path):
    run_dir = synthetic_run(tmp_path)[0]
    before = {r["image_id"]: r for r in open_run(run_dir).rows()}
    for path in open_run(run_dir).files:  # rewrite as 2.0 wrote it: no instance_id, no ignore column
        t = pq.read_table(path)
        meta = {**t.schema.metadata, b"reslabel.schema_version": b"2.0"}
        segs = [[{k: v for k, v in s.items() if k != "instance_id"} for s in row] for row in t["segments"].to_pylist()]
        t = t.drop_columns(["ignore", "confidence", "segments"])
        t = t.append_column("segments", __import__("pyarrow").array(segs))
        pq.write_table(t.replace_schema_metadata(meta), path)
    run = open_run(run_dir)
    assert run.schema_version == "2.0" and not run.legacy
    for image_id, row in ((r["image_id"], r) for r in run.rows()):
        assert row["ignore"] is None and all(s["instance_id"] is None for s in row["segments"])
        assert row["segments"] == before[image_id]["segments"]
    assert LABEL_SCHEMA.metadata[b"reslabel.schema_version"] == b"2.2"


@pytest.mark.parametrize("args,message", [
    (["--ignore-below", "1.5"], "--ignore-below 1.5 must be a probability in [0, 1]"),
    (["--min-instance-area", "4"], "--min-instance-area 4: must be >= 0 and needs --instances"),
    (["--instances", "--min-instance-area", "-1"], "--min-instance-area -1"),
])
def test_bad_options_are_refused(args, message):
    from jobs.label import config_from_args

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_args(["--input", "i", "--output", "o", "--preset", "voc21", "--random-weights", *args])


@pytest.mark.slow
def test_job_with_instances_and_ignore_regions(ray_local, image_dir, model_args, tmp_path):
    from jobs.export import main as export_main
    from pipeline.labels.dataset import LabeledImageDataset
    from pipeline.labels.export import read_label_png
    from tests.job_fixtures import run_cli

    out = tmp_path / "labels"
    plain = run_cli(["--input", str(image_dir), "--output", str(out), *model_args])
    s = run_cli(["--input", str(image_dir), "--output", str(out), "--instances", "--ignore-below", "0.3", *model_args])
    assert s["run_id"] != plain["run_id"] and s["job_hash"] != plain["job_hash"]  # other rows: labelled again
    assert s["segmenter_hash"] == plain["segmenter_hash"] and s["rows"] == plain["rows"]
    run = open_run(str(out / "runs" / s["run_id"]))
    rows = list(run.rows(status="ok"))
    assert rows and all(r["ignore"] is not None for r in rows)
    assert any(ignore_mask(r).any() for r in rows), "no pixel below 0.3: the test would not test the ignore path"
    # the --ignore-below guard: the share of the ok rows' pixels in ignore regions, in the summary and _SUCCESS.json
    ignored = sum(int(ignore_mask(r).sum()) for r in rows)
    total = sum(r["width"] * r["height"] for r in rows)
    assert (s["ignored_pixels"], s["ok_pixels"]) == (ignored, total) and s["ignore_below"] == 0.3
    assert s["ignored_share"] == pytest.approx(ignored / total, abs=1e-6)
    assert run.manifest["ignored_share"] == s["ignored_share"]
    assert "ignored_share" not in plain
    for r in rows:
        ids = [seg["instance_id"] for seg in r["segments"]]
        assert ids == list(range(1, len(ids) + 1))
        ign = ignore_mask(r)
        for seg in r["segments"]:
            assert not (decode_rle(seg["rle"]).astype(bool) & ign).any()

    coco_path = tmp_path / "coco.json"
    png_dir = tmp_path / "png"
    assert export_main([run.uri, "--coco", str(coco_path), "--png", str(png_dir)]) == 0
    from pycocotools.coco import COCO

    coco = COCO(str(coco_path))
    by_file = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
    assert len(coco.getAnnIds()) == sum(len(r["segments"]) for r in rows)
    for r in rows:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[by_file[r["source_uri"]]]))
        assert sorted(a["instance_id"] for a in anns) == [seg["instance_id"] for seg in r["segments"]]
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            seg = next(x for x in r["segments"] if x["instance_id"] == a["instance_id"])
            assert a["iscrowd"] == 0 and m.sum() == a["area"] == seg["area"]
            ys, xs = np.nonzero(m)
            assert a["bbox"] == pytest.approx([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
            assert a["bbox"] == pytest.approx(list(mask_utils.toBbox(a["segmentation"])))
    index = json.loads((png_dir / "label_maps.json").read_text())
    dset = LabeledImageDataset(run)
    for i in range(len(dset)):
        r = dset.row(i)
        ign = ignore_mask(r)
        png = read_label_png(str(png_dir / index["files"][r["image_id"]]))
        assert (png[ign] == 255).all() and np.array_equal(png, label_map(r).astype(np.uint8))
        _, lab = dset[i]
        assert (np.asarray(lab)[ign] == 255).all()


@pytest.mark.slow
def test_ignore_below_warns_when_it_ignores_almost_everything(ray_local, image_dir, model_args, tmp_path, capsys):
    """Random weights leave every pixel unsure: --ignore-below 0.999 ignores ~100 %; the run commits (exit 0) and
    says so on stderr, in the summary and in _SUCCESS.json."""
    from jobs import commit
    from jobs.label import main

    out = tmp_path / "labels"
    assert main(["--input", str(image_dir), "--output", str(out), "--ignore-below", "0.999", *model_args]) == 0
    captured = capsys.readouterr()
    (run_dir,) = (out / "runs").iterdir()
    manifest = open_run(str(run_dir)).manifest
    assert manifest["ignored_share"] > commit.IGNORED_WARN_SHARE and manifest["ignored_warn_share"] == 0.9
    assert len(manifest["warnings"]) == 1 and "ignore regions" in manifest["warnings"][0]
    assert "warning: --ignore-below 0.999 put" in captured.err
    assert "ignored (--ignore-below 0.999):" in captured.out


def test_ignored_summary_counts_parts():
    from jobs.commit import ignored_summary

    parts = [{"pixels": {"ok": 100, "ignored": 95}}, {"pixels": None}, {"pixels": {"ok": 100, "ignored": 90}}]
    s = ignored_summary(parts, 0.5)
    assert s["ignored_share"] == 0.925 and s["warnings"]
    assert ignored_summary(parts[:1] + [{"pixels": {"ok": 100, "ignored": 10}}], 0.5)["warnings"] == []
    assert ignored_summary(parts, None) == {}
    assert ignored_summary([{"pixels": None}], 0.5)["ignored_share"] is None  # parts written before the count
