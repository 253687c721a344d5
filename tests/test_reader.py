"""Reader: rows, masks and label maps equal what was written; filters; partial runs; pandas/duckdb; Dataset."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from pipeline.labels.dataset import LabeledImageDataset
from pipeline.labels.reader import RunNotCommitted, class_pixel_totals, label_map, masks, open_run
from tests.consumer_fixtures import CLASSES, label_row, synthetic_run, write_run


@pytest.fixture()
def run_parts(tmp_path):
    return synthetic_run(tmp_path)


def test_label_maps_and_masks_equal_written_labels(run_parts):
    run_dir, labels, _ = run_parts
    run = open_run(run_dir)
    assert run.committed and len(run.files) == 2 and run.categories == CLASSES
    seen = {}
    for row, lab in run.label_maps():
        seen[row["image_id"]] = lab
        np.testing.assert_array_equal(lab, labels[row["image_id"]])
        ids, stack = masks(row)
        assert stack.shape == (len(ids),) + lab.shape and stack.dtype == bool
        for c, m in zip(ids, stack):
            np.testing.assert_array_equal(m, labels[row["image_id"]] == c)
        assert stack.sum(axis=0).max() == 1  # a partition: every pixel in exactly one mask
    assert sorted(seen) == sorted(labels)


def test_uncovered_pixels_are_255(tmp_path):
    run_dir, labels, _ = synthetic_run(tmp_path, n_ok=2, n_failed=0, exclude=(0,))
    for row, lab in open_run(run_dir).label_maps():
        assert (lab == 255).any() or 0 not in np.unique(labels[row["image_id"]])
        np.testing.assert_array_equal(lab, labels[row["image_id"]])


def test_row_filters(run_parts):
    run_dir, labels, _ = run_parts
    run = open_run(run_dir)
    assert len(list(run.rows())) == 7
    assert {r["status"] for r in run.rows(status="decode_error")} == {"decode_error"}
    assert len(list(run.rows(status=["ok", "decode_error"]))) == 7
    assert [r["image_id"] for r in run.rows(image_ids=["img001", "img003", "nope"])] == ["img001", "img003"]
    cat_rows = list(run.rows(categories=["dog"]))
    expected = sorted(k for k, v in labels.items() if (v == 2).any())
    assert sorted(r["image_id"] for r in cat_rows) == expected
    assert all({s["category_id"] for s in r["segments"]} == {2} for r in cat_rows)
    assert [r["image_id"] for r in run.rows(categories=[2])] == [r["image_id"] for r in cat_rows]
    for r in run.rows(min_score=0.6):
        assert r["segments"] and all(s["score"] >= 0.6 for s in r["segments"])
    with pytest.raises(KeyError, match="zebra"):
        list(run.rows(categories=["zebra"]))
    table = run.table(columns=["image_id", "status"], status="ok")
    assert table.num_rows == 5 and table.column_names == ["image_id", "status"]


def test_partial_run_refused_unless_asked(tmp_path):
    run_dir = write_run(str(tmp_path / "partial"), [label_row("a", "a.png", np.zeros((4, 4), int), CLASSES)],
                        CLASSES, committed=False)
    with pytest.raises(RunNotCommitted, match="_SUCCESS.json"):
        open_run(run_dir)
    run = open_run(run_dir, allow_partial=True)
    assert not run.committed and len(list(run.rows())) == 1
    with pytest.raises(FileNotFoundError, match="no part"):
        open_run(str(tmp_path / "empty"), allow_partial=True)


def test_categories_fall_back_to_segment_names(tmp_path):
    rows = [label_row("a", "a.png", np.array([[0, 2], [2, 2]]), CLASSES)]
    run_dir = write_run(str(tmp_path / "r"), rows, CLASSES, parts=1, metadata={"reslabel.categories": "[]"},
                        manifest_categories=False)
    assert open_run(run_dir).categories == ["sky", "class_1", "dog"]


def test_only_parts_listed_in_success_are_read(run_parts):
    run_dir, _, _ = run_parts
    stray = os.path.join(run_dir, "part-00007.parquet")  # e.g. left by an attempt that was not committed
    shutil.copy(os.path.join(run_dir, "part-00000.parquet"), stray)
    assert len(list(open_run(run_dir).rows())) == 7
    assert len(list(open_run(run_dir, allow_partial=True).rows())) == 7
    os.remove(os.path.join(run_dir, "_SUCCESS.json"))
    assert len(open_run(run_dir, allow_partial=True).files) == 3


def test_pandas_and_duckdb_read_the_same_parquet(run_parts):
    import duckdb
    import pandas as pd

    run_dir, labels, _ = run_parts
    df = pd.read_parquet(run_dir)  # the README snippet: _SUCCESS.json is ignored (leading underscore)
    assert len(df) == 7 and (df["status"] == "ok").sum() == 5
    con = duckdb.connect()
    counts = dict(con.execute(
        f"SELECT status, count(*) FROM read_parquet('{run_dir}/part-*.parquet') GROUP BY 1").fetchall())
    assert counts == {"ok": 5, "decode_error": 2}
    per_class = dict(con.execute(
        f"SELECT s.category_name, sum(s.area) FROM read_parquet('{run_dir}/part-*.parquet'), "
        "unnest(segments) AS t(s) GROUP BY 1").fetchall())
    expected = {n: sum(int((v == c).sum()) for v in labels.values()) for c, n in enumerate(CLASSES)}
    assert per_class == {n: a for n, a in expected.items() if a}


def test_torch_dataset_pairs_images_with_label_maps(run_parts, tmp_path):
    import torch

    run_dir, labels, images = run_parts
    run = open_run(run_dir)
    dset = LabeledImageDataset(run)
    assert len(dset) == 5
    for i in range(len(dset)):
        image, lab = dset[i]
        image_id = dset.row(i)["image_id"]
        np.testing.assert_array_equal(image, images[image_id])
        np.testing.assert_array_equal(lab, labels[image_id])
    by_dir = LabeledImageDataset(run, images=str(tmp_path / "images"), categories=["cat"])
    assert 0 < len(by_dir) <= 5
    loader = torch.utils.data.DataLoader(
        LabeledImageDataset(run, transform=lambda im, lab: torch.from_numpy(lab[:8, :8])), batch_size=5)
    assert next(iter(loader)).shape == (5, 8, 8)
    wrong = LabeledImageDataset(run, images=lambda row: np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="img000: image is 3x3"):
        wrong[0]


def test_label_map_rejects_mismatched_segment(run_parts):
    run_dir, _, _ = run_parts
    row = next(open_run(run_dir).rows(status="ok"))
    row["height"] += 1
    with pytest.raises(ValueError, match=row["image_id"]):
        label_map(row)
    assert os.path.basename(run_dir) == "test-run"


def test_class_pixel_totals_from_stored_areas(tmp_path):
    run_dir, labels, _ = synthetic_run(tmp_path, exclude=(0,))
    run = open_run(run_dir)
    full = sum(np.bincount(np.where(v == 255, 0, v).ravel(), minlength=4) for v in labels.values())
    assert class_pixel_totals(run).tolist() == [0] + full[1:].tolist()  # the dropped class has no areas
    assert class_pixel_totals(run, fill=0).tolist() == full.tolist()  # ... unless its pixels are given back


def test_consumer_modules_never_import_ray_and_reader_skips_torch():
    import subprocess
    import sys

    mods = ["pipeline.labels.reader", "pipeline.evaluation.metrics", "pipeline.evaluation.benchmarks",
            "pipeline.labels.export", "pipeline.labels.overlay"]
    code = (f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
            "print('torch' in sys.modules)\n"
            "for m in ['pipeline.labels.dataset', 'pipeline.evaluation.protocol', "
            "'jobs.export', 'jobs.evaluate', 'jobs.overlay']:\n"
            "    importlib.import_module(m)\n"
            "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_docs_python_snippets_run(run_parts, capsys):
    """Every ```python block of docs/consumers.md runs, in order, on a real (synthetic) run."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "consumers.md").read_text()
    blocks = [b for marker, b in re.findall(r"(<!-- [a-z]+-snippet -->\n)?```python\n(.*?)```", text, flags=re.S)
              if not marker]  # marked ones run in their own tests: ray- (test_read_labels.py), train-
    assert len(blocks) == 3  # (test_train_readers.py), review- (test_review.py)
    namespace = {"RUN": run_parts[0]}
    for block in blocks:
        exec(compile(block, "docs/consumers.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "['sky', 'cat', 'dog', 'person']" in out and "img000 (37, 53)" in out and "decode_error" in out


def test_schema_1_runs_read_with_current_names(run_parts):
    """A run written before schema 2.0 (one ``config_hash`` column, no ``segmenter_hash``) reads like a current
    one: ``job_hash`` carries its config_hash, ``segmenter_hash`` is null; label maps and filters unchanged."""
    import pyarrow.parquet as pq

    from schemas import LEGACY_SCHEMA

    run_dir = run_parts[0]
    current = open_run(run_dir)
    before = {r["image_id"]: r for r in current.rows()}
    for path in current.files:
        t = pq.read_table(path)
        meta = {**t.schema.metadata, b"reslabel.schema_version": b"1.0"}
        t = t.drop_columns(["segmenter_hash"])
        t = t.rename_columns(["config_hash" if n == "job_hash" else n for n in t.column_names])
        pq.write_table(t.select(LEGACY_SCHEMA.names).cast(LEGACY_SCHEMA).replace_schema_metadata(meta), path)
    legacy = open_run(run_dir)
    assert legacy.legacy and legacy.schema_version == "1.0" and not current.legacy
    assert "config_hash" in legacy.dataset().schema.names  # the files as written
    rows = {r["image_id"]: r for r in legacy.rows()}
    assert rows.keys() == before.keys()
    for image_id, row in rows.items():
        assert row["job_hash"] == before[image_id]["job_hash"] and row["segmenter_hash"] is None
        assert "config_hash" not in row
        assert {k: v for k, v in row.items() if k != "segmenter_hash"} == \
            {k: v for k, v in before[image_id].items() if k != "segmenter_hash"}
    assert legacy.table(columns=["image_id", "job_hash"]).column_names == ["image_id", "job_hash"]
    ok = [r["image_id"] for r in legacy.rows(status="ok", columns=["image_id"])]
    assert ok == [r["image_id"] for r in current.rows(status="ok", columns=["image_id"])]
    for (row, labels), (_, expected) in zip(legacy.label_maps(), current.label_maps()):
        assert np.array_equal(labels, expected)
