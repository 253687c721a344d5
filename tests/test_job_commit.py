"""Commit rules without Ray: no-clobber writes, deterministic shards, incremental exclusion, run choice."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from jobs import commit, storage
from jobs.config import RETRY_POLICIES, LabelJobConfig
from jobs.inputs import INDEX_SCHEMA, entry
from jobs.runner import JobError, _choose_run


def _index(ids):
    return pa.Table.from_pylist([entry(i, f"/x/{i}.jpg", f"/x/{i}.jpg") for i in ids], schema=INDEX_SCHEMA)


def test_write_new_never_replaces(tmp_path):
    target = str(tmp_path / "a" / "part-00000.parquet")
    assert storage.write_new(target, b"first")
    assert not storage.write_new(target, b"second")
    assert (tmp_path / "a" / "part-00000.parquet").read_bytes() == b"first"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["part-00000.parquet"]  # no temp left


def test_shards_are_deterministic():
    a = commit.assign_shards(_index(["c", "a", "e", "b", "d"]), 2)
    b = commit.assign_shards(_index(["e", "d", "c", "b", "a"]), 2)
    assert a.equals(b)
    assert a.column("image_id").to_pylist() == ["a", "b", "c", "d", "e"]
    assert a.column("_shard").to_pylist() == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("policy,left", [("transient", {"new", "flaky"}), ("all", {"new", "flaky", "bad"}),
                                         ("none", {"new"})])
def test_incremental_exclusion(policy, left):
    seen = {"done": {"ok"}, "flaky": {"read_error"}, "bad": {"decode_error"}, "fixed": {"read_error", "ok"}}
    out = commit.exclude_done(_index(["done", "flaky", "bad", "fixed", "new"]), seen, RETRY_POLICIES[policy])
    assert set(out.column("image_id").to_pylist()) == left


def _register(output, run_id, config_hash, committed):
    run = commit.run_uri(output, run_id)
    plan = commit.assign_shards(_index(["a"]), 4)
    assert commit.write_plan(run, plan, {"config_hash": config_hash})
    assert not commit.write_plan(run, plan, {"config_hash": "other"})  # a registration is never replaced
    if committed:
        storage.write_json_new(storage.join(run, commit.SUCCESS), {"files": []})


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
