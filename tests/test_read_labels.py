"""Streaming readers for training: ``jobs.read.read_labels`` (Ray Data, local and s3:// runs) and the Hugging
Face ``datasets`` recipe of docs/consumers.md, both against the run reader's own label maps."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.read import nearest, read_labels
from pipeline.labels.reader import open_run
from tests.consumer_fixtures import synthetic_run
from tests.job_fixtures import s3_client, upload_dir

pytestmark = pytest.mark.slow


def test_read_labels_streams_decoded_label_maps(ray_local, tmp_path):
    run_dir, labels, images = synthetic_run(tmp_path, n_ok=5, n_failed=2)
    ds = read_labels(run_dir, with_images=True)
    rows = {r["image_id"]: r for r in ds.iter_rows()}
    assert set(rows) == set(labels)  # ok rows only, each once
    for image_id, r in rows.items():
        assert r["label"].dtype == np.uint8 and np.array_equal(r["label"], labels[image_id])
        assert np.array_equal(r["image"], images[image_id])
        assert (r["width"], r["height"]) == (labels[image_id].shape[1], labels[image_id].shape[0])
    failed = list(read_labels(run_dir, status=("decode_error",)).iter_rows())
    assert sorted(r["image_id"] for r in failed) == ["bad0", "bad1"] and all(r["label"].shape == (1, 1) for r in failed)

    # fixed size, numbers only: batches stack into tensors, ready for training
    ds = read_labels(run_dir, with_images=True, size=(24, 32), metadata=False)
    batches = list(ds.iter_torch_batches(batch_size=2))
    expected = {i: nearest(lab, (24, 32)) for i, lab in labels.items()}
    found = []
    for b in batches:
        assert tuple(b["label"].shape[1:]) == (24, 32) and tuple(b["image"].shape[1:]) == (24, 32, 3)
        assert set(b) == {"label", "image", "width", "height"}
        for lab in b["label"].numpy():
            found += [i for i, e in expected.items() if np.array_equal(lab, e)]
    assert sorted(found) == sorted(labels)  # each image's resized label map exactly once
    with pytest.raises(ValueError, match="size"):
        read_labels(run_dir, size=(0, 3))


def test_read_labels_reads_a_schema_2_0_run(ray_local, tmp_path):
    """Parts written before schema 2.1 have no ``ignore`` column and no ``instance_id``: they stream the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir, labels, _ = synthetic_run(tmp_path, n_ok=3, n_failed=1)
    for path in open_run(run_dir).files:
        t = pq.read_table(path)
        meta = {**t.schema.metadata, b"reslabel.schema_version": b"2.0"}
        segs = [[{k: v for k, v in s.items() if k != "instance_id"} for s in row] for row in t["segments"].to_pylist()]
        t = t.drop_columns(["ignore", "confidence", "segments"]).append_column("segments", pa.array(segs))
        pq.write_table(t.replace_schema_metadata(meta), path)
    got = {r["image_id"]: r["label"] for r in read_labels(run_dir).iter_rows()}
    assert set(got) == set(labels) and all(np.array_equal(got[i], labels[i]) for i in labels)


def test_read_labels_from_s3(ray_local, moto_endpoint, tmp_path, monkeypatch):
    run_dir, labels, _ = synthetic_run(tmp_path, n_ok=3, n_failed=1)
    s3_client(moto_endpoint).create_bucket(Bucket="readlabels")
    upload_dir(moto_endpoint, tmp_path / "runs" / "test-run", "readlabels", "out/runs/test-run")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    ds = read_labels("s3://readlabels/out/runs/test-run", s3_endpoint=moto_endpoint)
    got = {r["image_id"]: r["label"] for r in ds.iter_rows()}
    assert set(got) == set(labels) and all(np.array_equal(got[i], labels[i]) for i in labels)


def test_huggingface_datasets_recipe(tmp_path):
    """The recipe of docs/consumers.md: ``load_dataset("parquet", data_files=<the committed parts>)`` and a
    decode function that adds the label map."""
    import datasets  # a test dependency (pyproject.toml): the recipe must keep working

    from pipeline.labels.reader import label_map

    run_dir, labels, _ = synthetic_run(tmp_path, n_ok=4, n_failed=1)
    run = open_run(run_dir)
    ds = datasets.load_dataset("parquet", data_files=run.files, split="train", cache_dir=str(tmp_path / "hf"))
    ds = ds.filter(lambda row: row["status"] == "ok")
    ds = ds.map(lambda row: {"label": label_map(row)})
    ds = ds.with_format("numpy", columns=["label"], output_all_columns=True)
    got = {row["image_id"]: row["label"] for row in ds}
    assert set(got) == set(labels)
    for image_id, lab in got.items():
        assert np.array_equal(np.asarray(lab), labels[image_id])


def test_docs_streaming_snippets_run(ray_local, tmp_path, capsys, monkeypatch):
    """The marked blocks of docs/consumers.md (Ray Data and Hugging Face), in order, on a real run."""
    import pathlib
    import re

    run_dir, labels, _ = synthetic_run(tmp_path, n_ok=4, n_failed=1)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    text = (pathlib.Path(__file__).parent.parent / "docs" / "consumers.md").read_text()
    blocks = re.findall(r"<!-- ray-snippet -->\n```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    namespace = {"RUN": run_dir}
    for block in blocks:
        exec(compile(block, "docs/consumers.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "(256, 256, 3) (256, 256) torch.uint8" in out
    assert any(f"{i} {labels[i].shape}" in out for i in labels)  # the Hugging Face block's first row
