"""Run layout, plans and commits: how the job is exactly-once and resumable.

    OUTPUT/runs/<run_id>/_plan.parquet     the run's inputs (index rows + ``_shard``) and config; written
                                           first and never changed — it *is* the run's registration
    OUTPUT/runs/<run_id>/part-00000.parquet one per shard, written once, atomically (no-clobber)
    OUTPUT/runs/<run_id>/_SUCCESS.json     written last: files, row counts, stats; the run is committed

A part file exists only complete, so a shard is done iff its part exists; resuming labels only the
missing shards of the plan. A new run leaves out images already labeled by committed runs of the same
config hash (except retryable failures), so committed runs never hold two rows for one image unless a
failure was retried.
"""
from __future__ import annotations

import collections
import io
import json
import re
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import storage
from schemas import LABEL_SCHEMA, SCHEMA_VERSION

RUNS = "runs"
PLAN = "_plan.parquet"
SUCCESS = "_SUCCESS.json"
PLAN_KEY = b"reslabel.plan"
TOP_ERRORS = 10  # error groups kept per part and per run
_PART_RE = re.compile(r"part-(\d{5,})\.parquet$")


def run_uri(output: str, run_id: str) -> str:
    return storage.join(output, RUNS, run_id)


def part_uri(run: str, shard: int) -> str:
    return storage.join(run, f"part-{shard:05d}.parquet")


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def assign_shards(index: pa.Table, shard_size: int) -> pa.Table:
    """Index sorted by image_id → plus ``_shard`` = position // shard_size (deterministic)."""
    index = index.sort_by("image_id")
    shards = pa.array([i // shard_size for i in range(index.num_rows)], pa.int32())
    return index.append_column("_shard", shards)


def write_plan(run: str, plan: pa.Table, meta: Dict) -> bool:
    """Register the run: the plan table with ``meta`` (JSON) in its key-value metadata. No-clobber."""
    plan = plan.replace_schema_metadata({PLAN_KEY: json.dumps(meta, default=str).encode()})
    return storage.write_new(storage.join(run, PLAN), _parquet_bytes(plan))


def read_plan(run: str) -> Tuple[pa.Table, Dict]:
    fs, path = storage.fs_for(storage.join(run, PLAN))
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    return table, json.loads(table.schema.metadata[PLAN_KEY])


def read_plan_meta(run: str) -> Dict:
    fs, path = storage.fs_for(storage.join(run, PLAN))
    with fs.open(path, "rb") as f:
        return json.loads(pq.read_schema(f).metadata[PLAN_KEY])


def committed_shards(run: str) -> Set[int]:
    """Shards whose part file exists (parts appear only complete)."""
    return {int(m.group(1)) for u in storage.list_dir(run) if (m := _PART_RE.search(u))}


def list_runs(output: str) -> List[Dict]:
    """Every registered run under OUTPUT: ``{run_id, uri, config_hash, committed}``, by run id."""
    out = []
    for uri in storage.list_dir(storage.join(output, RUNS)):
        run_id = uri.rstrip("/").rsplit("/", 1)[-1]
        names = {u.rstrip("/").rsplit("/", 1)[-1] for u in storage.list_dir(uri)}
        if PLAN not in names:
            continue
        meta = read_plan_meta(uri)
        out.append(dict(run_id=run_id, uri=uri, config_hash=meta["config_hash"], committed=SUCCESS in names))
    return out


def committed_statuses(output: str, config_hash: str) -> Dict[str, Set[str]]:
    """image_id → statuses of its rows in committed runs of ``config_hash`` (files from ``_SUCCESS.json``)."""
    seen: Dict[str, Set[str]] = collections.defaultdict(set)
    for run in list_runs(output):
        if not (run["committed"] and run["config_hash"] == config_hash):
            continue
        success = storage.read_json(storage.join(run["uri"], SUCCESS))
        for f in success["files"]:
            fs, path = storage.fs_for(storage.join(run["uri"], f["name"]))
            with fs.open(path, "rb") as fh:
                t = pq.read_table(fh, columns=["image_id", "status"])
            for i, s in zip(t.column("image_id").to_pylist(), t.column("status").to_pylist()):
                seen[i].add(s)
    return seen


def exclude_done(index: pa.Table, seen: Dict[str, Set[str]], retry: Iterable[str]) -> pa.Table:
    """Drop inputs that have a committed row whose status is final (ok, or a failure not in ``retry``)."""
    retry = set(retry)
    done = [i for i, statuses in seen.items() if statuses - retry]
    if not done:
        return index
    return index.filter(pc.invert(pc.is_in(index.column("image_id"), value_set=pa.array(done, pa.string()))))


def part_table(tables: List[pa.Table], metadata: Dict[str, str]) -> pa.Table:
    """Actor output batches of one shard → a table with exactly ``LABEL_SCHEMA`` and run metadata, by image_id."""
    t = pa.concat_tables(tables).select(LABEL_SCHEMA.names).cast(LABEL_SCHEMA).sort_by("image_id")
    meta = {**(LABEL_SCHEMA.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
    return t.replace_schema_metadata(meta)


def _error_message_key(error: str, source_uri: str) -> str:
    """An error message with the image's own URI/path and the numbers in it replaced, so that the same failure
    of many images groups under one message."""
    msg = error
    for name in (source_uri, source_uri.split("://", 1)[-1], source_uri.rsplit("/", 1)[-1]):
        if name:
            msg = msg.replace(name, "<input>")
    return re.sub(r"\d+", "N", msg)[:300]


def error_groups(table: pa.Table, keep: int = TOP_ERRORS) -> List[List]:
    """Rows that are not ``ok`` (columns status, error, source_uri) grouped by (status, message pattern):
    ``[[status, message, count, example source_uri], ...]``, the ``keep`` largest groups first."""
    groups: Dict[Tuple[str, str], List] = {}
    for status, error, uri in zip(*(table.column(c).to_pylist() for c in ("status", "error", "source_uri"))):
        if status == "ok":
            continue
        key = (status, _error_message_key(error or "", uri or ""))
        groups.setdefault(key, [status, key[1], 0, uri])[2] += 1
    return sorted(groups.values(), key=lambda g: (-g[2], g[0], g[1]))[:keep]


def write_part(run: str, shard: int, table: pa.Table) -> bool:
    return storage.write_new(part_uri(run, shard), _parquet_bytes(table))


def read_part_stats(run: str) -> List[Dict]:
    """Per committed part: name, rows, status counts and the stage seconds stored in its metadata."""
    out = []
    for shard in sorted(committed_shards(run)):
        uri = part_uri(run, shard)
        fs, path = storage.fs_for(uri)
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["status"])
        meta = json.loads((t.schema.metadata or {}).get(b"reslabel.part_stats", b"{}"))
        counts = collections.Counter(t.column("status").to_pylist())
        out.append(dict(name=uri.rsplit("/", 1)[-1], shard=shard, rows=t.num_rows, by_status=dict(counts),
                        stage_seconds=meta.get("stage_seconds", {}), errors=meta.get("errors", [])))
    return out


def success_record(run_id: str, run: str, plan_meta: Dict, parts: List[Dict], attempt: Dict) -> Dict:
    """The ``_SUCCESS.json`` body: files, rows, status counts, the most frequent errors, stage seconds (summed
    over images), timings."""
    by_status: collections.Counter = collections.Counter()
    stages: collections.Counter = collections.Counter()
    errors: Dict[Tuple[str, str], List] = {}
    for p in parts:
        by_status.update(p["by_status"])
        stages.update(p["stage_seconds"])
        for status, message, count, example in p.get("errors", []):
            errors.setdefault((status, message), [status, message, 0, example])[2] += count
    top = sorted(errors.values(), key=lambda g: (-g[2], g[0], g[1]))[:TOP_ERRORS]
    return dict(run_id=run_id, run_uri=run, schema_version=SCHEMA_VERSION, config_hash=plan_meta["config_hash"],
                files=[{"name": p["name"], "rows": p["rows"]} for p in parts], rows=sum(p["rows"] for p in parts),
                by_status=dict(by_status),
                top_errors=[dict(status=s, message=m, count=c, example=e) for s, m, c, e in top],
                stage_seconds_summed=dict(stages), attempt=attempt,
                categories=plan_meta["categories"], provenance=plan_meta["provenance"], config=plan_meta["config"],
                created_at=plan_meta["created_at"])


def write_success(run: str, record: Dict) -> bool:
    return storage.write_json_new(storage.join(run, SUCCESS), record)


def find_unfinished(output: str, config_hash: str, exclude_run: Optional[str] = None) -> List[str]:
    return [r["run_id"] for r in list_runs(output)
            if r["config_hash"] == config_hash and not r["committed"] and r["run_id"] != exclude_run]
