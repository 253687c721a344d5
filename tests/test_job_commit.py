"""Commit rules without Ray: no-clobber writes, registration (and layout-1 runs), run choice, the part files a new
run must not label again, error grouping and the success record."""
from __future__ import annotations

import dataclasses
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import commit, storage
from jobs.config import LabelJobConfig
from jobs.inputs import INDEX_SCHEMA, entry
from jobs.runner import JobError, _choose_run
from schemas import layout


def _index(ids):
    return pa.Table.from_pylist([entry(i, f"/x/{i}.jpg", f"/x/{i}.jpg") for i in ids], schema=INDEX_SCHEMA)


def test_write_new_never_replaces(tmp_path):
    target = str(tmp_path / "a" / "part-00000.parquet")
    assert storage.write_new(target, b"first")
    assert not storage.write_new(target, b"second")
    assert (tmp_path / "a" / "part-00000.parquet").read_bytes() == b"first"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["part-00000.parquet"]  # no temp left


def _register(output, run_id, config_hash, committed, parts=()):
    run = commit.run_uri(output, run_id)
    manifest = {"config_hash": config_hash, "plan_files": [], "shard_size": 4}
    assert commit.write_manifest(run, manifest)
    assert not commit.write_manifest(run, {**manifest, "config_hash": "other"})  # never replaced
    for name in parts:
        storage.write_new(storage.join(run, name), b"x")
    if committed:
        files = [{"name": n, "rows": 1} for n in parts]
        storage.write_json_new(storage.join(run, layout.SUCCESS), {"files": files})
    return run


def _legacy_run(output, run_id, config_hash, ids, shard_size=2):
    """A run registered by layout 1: ``_plan.parquet`` = index rows sorted by id + ``_shard``, meta in its footer."""
    run = commit.run_uri(output, run_id)
    plan = _index(sorted(ids))
    plan = plan.append_column("_shard", pa.array([i // shard_size for i in range(len(ids))], pa.int32()))
    meta = {"run_id": run_id, "config_hash": config_hash, "config": {"job": {"shard_size": shard_size}},
            "excluded_category_ids": [0]}
    buf = io.BytesIO()
    pq.write_table(plan.replace_schema_metadata({layout.LEGACY_PLAN_KEY: json.dumps(meta).encode()}), buf)
    storage.write_new(storage.join(run, layout.LEGACY_PLAN), buf.getvalue())
    return run


def test_registration_and_layout_1_runs(tmp_path):
    out = str(tmp_path)
    run = _register(out, "new", "h1", committed=False)
    assert commit.read_manifest(run)["config_hash"] == "h1"
    legacy = _legacy_run(out, "old", "h1", ["c", "a", "b"])
    m = commit.read_manifest(legacy)
    assert (m["layout"], m["shard_size"], m["plan_files"]) == (1, 2, [{"name": "_plan.parquet", "rows": 3}])
    assert commit.read_manifest(commit.run_uri(out, "absent")) is None
    assert {r["run_id"]: r["job_hash"] for r in commit.list_runs(out)} == {"new": "h1", "old": "h1"}


def test_run_choice_resumes_or_refuses(tmp_path):
    out = str(tmp_path)
    cfg = LabelJobConfig(input="x", output=out)
    assert _choose_run(cfg, out, "h1")[:2] == "20"  # a new timestamped id when no run is open
    _register(out, "old", "h1", committed=True)
    _register(out, "crashed", "h1", committed=False)
    _register(out, "other-config", "h2", committed=False)
    assert _choose_run(cfg, out, "h1") == "crashed"  # the unfinished run of this config is resumed
    assert _choose_run(dataclasses.replace(cfg, run_id="crashed"), out, "h1") == "crashed"
    with pytest.raises(JobError, match="--run-id crashed"):
        _choose_run(dataclasses.replace(cfg, run_id="new"), out, "h1")
    assert {r["run_id"]: r["committed"] for r in commit.list_runs(out)} == {
        "old": True, "crashed": False, "other-config": False}


def test_committed_parts_of_a_config(tmp_path):
    out = str(tmp_path)
    a = _register(out, "a", "h1", committed=True, parts=[layout.part_name(0), layout.part_name(1)])
    _register(out, "b", "h1", committed=False, parts=[layout.part_name(0)])  # not committed: not counted
    _register(out, "c", "h2", committed=True, parts=[layout.part_name(0)])  # another config
    assert commit.committed_part_uris(out, "h1") == [storage.join(a, layout.part_name(0)),
                                                     storage.join(a, layout.part_name(1))]
    assert commit.committed_shards(a) == {0, 1}


def test_error_groups_collapse_per_image_details():
    t = pa.table({"status": ["decode_error", "decode_error", "ok", "read_error"],
                  "error": ["image file is truncated (4 bytes not processed)",
                            "image file is truncated (12 bytes not processed)", None,
                            "FileNotFoundError: /data/x/b.jpg"],
                  "source_uri": ["/data/x/a.jpg", "/data/x/c.jpg", "/data/x/d.jpg", "/data/x/b.jpg"]})
    assert commit.error_groups(t) == [
        ["decode_error", "image file is truncated (N bytes not processed)", 2, "/data/x/a.jpg"],
        ["read_error", "FileNotFoundError: <input>", 1, "/data/x/b.jpg"]]


def test_success_record_sums_the_parts():
    manifest = {"config_hash": "h", "categories": [], "excluded_category_ids": [0], "provenance": {}, "config": {},
                "created_at": "t"}
    parts = [dict(shard=1, name=layout.part_name(1), rows=2, by_status={"ok": 1, "empty": 1},
                  stage_seconds={"read": 1.0}, errors=[["empty", "zero bytes", 1, "/e.png"]]),
             dict(shard=0, name=layout.part_name(0), rows=3, by_status={"ok": 2, "empty": 1},
                  stage_seconds={"read": 0.5}, errors=[["empty", "zero bytes", 1, "/f.png"]])]
    r = commit.success_record("run", "/out/runs/run", manifest, parts, {})
    assert [f["name"] for f in r["files"]] == ["part-00000.parquet", "part-00001.parquet"]
    assert (r["rows"], r["by_status"], r["stage_seconds_summed"]) == (5, {"ok": 3, "empty": 2}, {"read": 1.5})
    assert r["top_errors"] == [{"status": "empty", "message": "zero bytes", "count": 2, "example": "/e.png"}]
    assert r["layout"] == layout.LAYOUT_VERSION and r["excluded_category_ids"] == [0]
