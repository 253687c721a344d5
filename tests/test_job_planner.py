"""Distributed planning (jobs/planner.py) on a local Ray: one listing, index tasks hash-partitioned into buckets,
duplicate ids caught across input files, the incremental anti-join against committed parts, sorted plan files,
and shards read back across plan-file boundaries."""
from __future__ import annotations

import collections

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import planner
from jobs.config import RETRY_POLICIES
from jobs.inputs import InputError, InputOptions
from jobs.planner import PlanLocator, Planner, buckets_of
from schemas import layout

pytestmark = pytest.mark.slow


def test_buckets_are_stable_and_spread():
    ids = pa.array([f"id-{i}" for i in range(1000)])
    a, b = buckets_of(ids, 8), buckets_of(ids, 8)
    assert (a == b).all() and set(a.tolist()) == set(range(8))
    assert buckets_of(pa.array(["x"]), 1).tolist() == [0]


def test_plan_locator_reads_shards_across_files():
    loc = PlanLocator(("f0", "f1", "f2"), (0, 3, 4), rows=9, shard_size=4)
    assert loc.shards == 3
    assert loc.pieces(0) == [("f0", 0, 3), ("f1", 0, 1)]
    assert loc.pieces(1) == [("f2", 0, 4)]
    assert loc.pieces(2) == [("f2", 4, 1)]


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img-{i:03d}.jpg").write_bytes(b"x")  # planning never reads image bytes
    return sorted(str(p) for p in folder.iterdir())


def _plan(tmp_path, src, done_parts=(), retry="transient", shard_size=4, fmt="auto"):
    p = Planner(InputOptions(), RETRY_POLICIES[retry], None)
    run, staging = str(tmp_path / "out" / "runs" / "r"), str(tmp_path / "out" / "_planning" / "a1")
    indexed = p.index(str(src), fmt, staging)
    planned = p.write_plan(indexed, run, "a1", shard_size, list(done_parts))
    p.discard(staging)
    assert not list((tmp_path / "out" / "_planning" / "a1").glob("*"))  # staging files removed
    return run, indexed, planned


def test_many_buckets_sorted_plan_files_and_every_shard(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "CHUNK_ROWS", 7)  # 30 images: 5 listing chunks -> MAX_BUCKETS buckets
    monkeypatch.setattr(planner, "MAX_BUCKETS", 3)
    uris = _images(tmp_path / "in", 30)
    run, indexed, planned = _plan(tmp_path, tmp_path / "in")
    assert (indexed.kind, indexed.buckets, len(indexed.units)) == ("images", 3, 5)
    assert (planned.rows, planned.candidates, planned.excluded) == (30, 30, 0)
    assert [f["name"] for f in planned.files] == [f"_plan/a1/{layout.plan_file_name(b)}" for b in range(3)]
    for f in planned.files:  # each bucket sorted by image_id
        ids = pq.read_table(f"{run}/{f['name']}").column("image_id").to_pylist()
        assert ids == sorted(ids) and len(ids) == f["rows"]
    loc = PlanLocator.of(run, planned.files, 4)
    read = [r for k in range(loc.shards) for r in loc.read(k).column("source_uri").to_pylist()]
    assert sorted(read) == uris and len(read) == 30  # every input in exactly one shard


def test_one_chunk_is_one_bucket(ray_local, tmp_path):
    _images(tmp_path / "in", 5)
    _, indexed, planned = _plan(tmp_path, tmp_path / "in")
    assert indexed.buckets == 1 and len(planned.files) == 1


def test_incremental_anti_join_follows_the_retry_policy(ray_local, tmp_path):
    from jobs.inputs import stable_id

    uris = _images(tmp_path / "in", 6)
    part = tmp_path / "old" / layout.part_name(0)
    part.parent.mkdir()
    statuses = ["ok", "read_error", "decode_error", "inference_error"]
    pq.write_table(pa.table({"image_id": [stable_id(u) for u in uris[:4]], "status": statuses}), part)
    left = {}
    for policy in ("transient", "all", "none"):
        _, _, planned = _plan(tmp_path / policy, tmp_path / "in", done_parts=[str(part)], retry=policy)
        left[policy] = planned.rows
    assert left == {"transient": 2 + 2, "all": 2 + 3, "none": 2}  # new ones + retried failures


def test_duplicate_ids_across_files_and_repeated_uris(ray_local, tmp_path):
    (tmp_path / "img").mkdir()
    m1, m2 = tmp_path / "m" / "a.csv", tmp_path / "m" / "b.csv"
    m1.parent.mkdir()
    m1.write_text(f"uri,id\n{tmp_path}/img/x.jpg,k1\n{tmp_path}/img/y.jpg,k2\n")
    m2.write_text(f"uri,id\n{tmp_path}/img/x.jpg,k1\n")  # the same input listed again: one row
    run, indexed, planned = _plan(tmp_path, tmp_path / "m", fmt="manifest")
    assert indexed.buckets == 2 and planned.rows == 2
    m2.write_text(f"uri,id\n{tmp_path}/img/z.jpg,k1\n")  # another input under the same id: refused
    with pytest.raises(InputError, match=r"duplicate image ids \['k1'\]"):
        _plan(tmp_path / "again", tmp_path / "m", fmt="manifest")


def test_empty_input_is_refused_before_any_plan(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images")
    with pytest.raises(InputError, match="no inputs found"):
        Planner(InputOptions(), (), None).index(str(tmp_path / "in"), "auto", str(tmp_path / "staging"))


def test_auto_lists_once_and_prefers_containers(ray_local, tmp_path, monkeypatch):
    calls = collections.Counter()
    real = planner.scan_input

    def counting(*args, **kwargs):
        calls["scan"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(planner, "scan_input", counting)
    _images(tmp_path / "in", 3)
    pq.write_table(pa.table({"uri": [f"{tmp_path}/in/img-000.jpg"]}), tmp_path / "in" / "list.parquet")
    _, indexed, planned = _plan(tmp_path, tmp_path / "in")
    assert calls["scan"] == 1 and indexed.kind == "manifest" and planned.rows == 1
