"""The labeling job end to end on a local Ray with local files: rows == inputs, statuses, masks equal to
the in-process segmenter, readable by pyarrow/pandas/pycocotools; then an incremental second run."""
from __future__ import annotations

import collections
import json
import shutil

import pyarrow.parquet as pq
import pytest

from tests.job_fixtures import (
    assert_masks_match_inprocess,
    committed_rows,
    expected_status_by_name,
    own_text_cache,
    run_cli,
    sample_files,
)

pytestmark = pytest.mark.slow


def test_images_end_to_end_then_incremental(ray_local, image_dir, model_args, tmp_path):
    model_args = own_text_cache(model_args)  # the text cache under the output: s1 is the config's first run
    src = tmp_path / "in"
    shutil.copytree(image_dir, src)
    late = {n: sample_files()[n] for n in ("coffee.webp", "pixel.bmp")}
    for n in late:
        (src / n).unlink()  # they arrive later
    out = tmp_path / "out"
    s1 = run_cli(["--input", str(src), "--output", str(out), *model_args])

    rows = committed_rows(str(out))
    names = [r["source_uri"].rsplit("/", 1)[-1] for r in rows]
    expected = {n: s for n, s in expected_status_by_name().items() if n not in late}
    assert sorted(names) == sorted(expected)  # exactly one row per input
    assert {n: r["status"] for n, r in zip(names, rows)} == expected
    assert s1["rows"] == len(expected) and s1["by_status"]["ok"] == sum(s == "ok" for s in expected.values())
    for r in rows:
        assert (r["error"] is None) == (r["status"] == "ok")
        assert r["run_id"] == s1["run_id"] and r["job_hash"] == s1["job_hash"]
    by_name = dict(zip(names, rows))
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (48, 64)  # EXIF applied
    assert "max_pixels" in by_name["huge.png"]["error"]
    files = {n: d for n, (d, _) in sample_files().items()}
    assert assert_masks_match_inprocess(rows, files, model_args) == sum(s == "ok" for s in expected.values())

    # the committed layout, read back with pyarrow and pandas
    run = out / "runs" / s1["run_id"]
    success = json.loads((run / "_SUCCESS.json").read_text())
    assert [f["name"] for f in success["files"]] == sorted(p.name for p in run.glob("part-*.parquet"))
    assert success["attempt"]["images_per_second"] > 0 and "segment" in success["stage_seconds_summed"]
    table = pq.read_table(run)  # a plain directory read works too (underscore files are ignored)
    meta = table.schema.metadata
    assert json.loads(meta[b"reslabel.categories"])[1]["name"] == "cat"
    assert json.loads(meta[b"reslabel.config"])["segmenter"]["preset"] == "voc21"
    df = table.to_pandas()
    assert len(df) == len(expected) and set(df.status) == set(expected.values())

    # incremental: two new images arrive; a second run labels only those
    for n, (data, _) in late.items():
        (src / n).write_bytes(data)
    s2 = run_cli(["--input", str(src), "--output", str(out), *model_args])
    assert s2["run_id"] != s1["run_id"] and s2["rows"] == len(late)
    all_rows = committed_rows(str(out))
    counts = collections.Counter(r["source_uri"].rsplit("/", 1)[-1] for r in all_rows)
    assert counts == collections.Counter(list(expected_status_by_name()))  # every input exactly once

    # nothing new: no run is created
    s3 = run_cli(["--input", str(src), "--output", str(out), *model_args])
    assert s3["run_id"] is None and len(list((out / "runs").iterdir())) == 2
    assert s3["job_hash"] == s1["job_hash"] == s2["job_hash"]
    assert "prepare_seconds" not in s3["attempt"]  # decided from the hashes: no model loaded, no text encoded
    # the first run is the config's first: its prepare task ran beside planning; the second found the text
    # embeddings in the output's cache and built no model on the driver's side
    assert s1["attempt"]["text_embeddings"] == "prepare task, started with planning"
    assert s2["attempt"]["text_embeddings"] == "cache"
