"""Registration, parts and commits: how the job is exactly-once and resumable (file names: ``schemas/layout.py``).

* A run is registered by ``_plan.json`` (no-clobber), written after its plan files: the run's inputs, config,
  provenance and categories. It never changes.
* A part exists only complete: a worker writes ``part-<shard>.parquet`` once, atomically, never replacing one
  (local: temp file + hard link; object stores: one PUT after an existence check). A shard is done iff its
  part exists, so resuming labels only the missing shards of the plan.
* ``_SUCCESS.json`` is written last, from the write results (and the footers of parts an earlier attempt
  committed): the run is committed.
* A new run leaves out images already labeled by committed runs of the same config hash (except retryable
  failures; ``jobs.planner``), so committed runs never hold two rows for one image unless a failure was retried.
"""
from __future__ import annotations

import collections
import io
import json
import re
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import storage
from schemas import LABEL_SCHEMA, SCHEMA_VERSION, layout

TOP_ERRORS = 10  # error groups kept per part and per run


def run_uri(output: str, run_id: str) -> str:
    return storage.join(output, layout.RUNS, run_id)


def part_uri(run: str, shard: int) -> str:
    return storage.join(run, layout.part_name(shard))


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


# ---- registration ---------------------------------------------------------------------------------------
def write_manifest(run: str, manifest: Dict) -> bool:
    """Register the run (``_plan.json``, no-clobber); False if it was already registered."""
    return storage.write_json_new(storage.join(run, layout.PLAN_MANIFEST), manifest)


def read_manifest(run: str) -> Optional[Dict]:
    """The run's registration, or None. A layout-1 run (``_plan.parquet``) reads as a manifest whose one plan
    file is that table: it is sorted by image_id with ``_shard = row // shard_size``, the same shards."""
    try:
        return storage.read_json(storage.join(run, layout.PLAN_MANIFEST))
    except FileNotFoundError:
        pass
    legacy = storage.join(run, layout.LEGACY_PLAN)
    try:
        with storage.open_read(legacy) as f:
            pf = pq.ParquetFile(f)
            meta = json.loads(pf.schema_arrow.metadata[layout.LEGACY_PLAN_KEY])
            rows = pf.metadata.num_rows
    except FileNotFoundError:
        return None
    return {**meta, "layout": 1, "shard_size": int(meta["config"]["job"]["shard_size"]),
            "plan_files": [{"name": layout.LEGACY_PLAN, "rows": rows}]}


def list_runs(output: str) -> List[Dict]:
    """Every registered run under OUTPUT: ``{run_id, uri, job_hash, committed}``, by run id."""
    out = []
    for uri in storage.list_dir(storage.join(output, layout.RUNS)):
        run_id = uri.rstrip("/").rsplit("/", 1)[-1]
        names = {u.rstrip("/").rsplit("/", 1)[-1] for u in storage.list_dir(uri)}
        if not names & {layout.PLAN_MANIFEST, layout.LEGACY_PLAN}:
            continue
        meta = read_manifest(uri)
        out.append(dict(run_id=run_id, uri=uri, job_hash=layout.job_hash_of(meta), committed=layout.SUCCESS in names))
    return out


def find_unfinished(output: str, job_hash: str, exclude_run: Optional[str] = None) -> List[str]:
    return [r["run_id"] for r in list_runs(output)
            if r["job_hash"] == job_hash and not r["committed"] and r["run_id"] != exclude_run]


def committed_part_uris(output: str, job_hash: str) -> List[str]:
    """The part files of the committed runs of ``job_hash`` (from their ``_SUCCESS.json``): what a new run of
    the config must not label again."""
    out = []
    for run in list_runs(output):
        if run["committed"] and run["job_hash"] == job_hash:
            success = storage.read_json(storage.join(run["uri"], layout.SUCCESS))
            out += [storage.join(run["uri"], f["name"]) for f in success["files"]]
    return out


def committed_shards(run: str) -> Set[int]:
    """Shards whose part file exists (parts appear only complete)."""
    return {s for u in storage.list_dir(run) if (s := layout.shard_of(u)) is not None}


# ---- parts (written by workers) ---------------------------------------------------------------------------
def part_table(tables: List[pa.Table], metadata: Dict[str, str]) -> pa.Table:
    """Rows of one shard → a table with exactly ``LABEL_SCHEMA`` and run metadata, by image_id."""
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


def part_stats(table: pa.Table, stage_seconds: Dict[str, float]) -> Dict:
    """What a part's metadata and its write result carry: status counts, stage seconds, top errors, and the
    pixels of its ``ok`` rows and of their ignore regions (``pixel_counts``)."""
    return dict(by_status=dict(collections.Counter(table.column("status").to_pylist())),
                stage_seconds=stage_seconds, errors=error_groups(table), pixels=pixel_counts(table))


# ---- ignored share (--ignore-below guard) -------------------------------------------------------------------
IGNORED_WARN_SHARE = 0.9  # above this share of the ok rows' pixels in ignore regions, the job warns


def pixel_counts(table: pa.Table) -> Dict[str, int]:
    """``{"ok": pixels of the ok rows (width x height), "ignored": pixels in their ignore regions}``."""
    from pipeline.labels.rle import rle_area

    ok = ignored = 0
    names = table.column_names
    for row in table.select([c for c in ("status", "width", "height", "ignore") if c in names]).to_pylist():
        if row["status"] == "ok" and row["width"] is not None:
            ok += int(row["width"]) * int(row["height"])
            ignored += rle_area(row["ignore"]) if row.get("ignore") else 0
    return {"ok": ok, "ignored": ignored}


def ignored_summary(parts: List[Dict], ignore_below: Optional[float]) -> Dict:
    """``ignored_pixels``, ``ok_pixels``, ``ignored_share`` (None when no part recorded pixels) and the
    ``warnings`` of a run labelled with ``--ignore-below`` (share above ``IGNORED_WARN_SHARE``); {} without it."""
    if ignore_below is None:
        return {}
    counted = [p["pixels"] for p in parts if p.get("pixels")]
    ok, ignored = sum(c["ok"] for c in counted), sum(c["ignored"] for c in counted)
    share = ignored / ok if counted and ok else None
    out: Dict[str, Any] = dict(ignore_below=ignore_below, ok_pixels=ok, ignored_pixels=ignored,
                               ignored_share=None if share is None else round(share, 6),
                               ignored_warn_share=IGNORED_WARN_SHARE, warnings=[])
    if share is not None and share > IGNORED_WARN_SHARE:
        out["warnings"].append(
            f"--ignore-below {ignore_below} put {share:.1%} of the labelled pixels in ignore regions (more than "
            f"{IGNORED_WARN_SHARE:.0%}): almost nothing is left to train on. The model is unsure of most pixels "
            "(random or mismatched weights, a vocabulary that does not fit the images); lower --ignore-below or "
            "check the run with `python -m jobs.report`")
    return out
# ---- end ignored share --------------------------------------------------------------------------------------


def write_part(run: str, shard: int, table: pa.Table) -> bool:
    return storage.write_new(part_uri(run, shard), _parquet_bytes(table))


def read_part_stats(run: str, shards: Iterable[int]) -> List[Dict]:
    """Stats of parts an earlier attempt committed, from their footers (``reslabel.part_stats``); parts written
    before the footer held status counts are counted from their status column."""
    out = []
    for shard in sorted(shards):
        with storage.open_read(part_uri(run, shard)) as f:
            pf = pq.ParquetFile(f)
            meta = json.loads((pf.schema_arrow.metadata or {}).get(layout.META_PART_STATS.encode(), b"{}"))
            rows = pf.metadata.num_rows
            by_status = meta.get("by_status")
            if by_status is None:
                by_status = dict(collections.Counter(pf.read(columns=["status"]).column(0).to_pylist()))
        out.append(dict(shard=shard, name=layout.part_name(shard), rows=rows, by_status=by_status,
                        stage_seconds=meta.get("stage_seconds", {}), errors=meta.get("errors", []),
                        pixels=meta.get("pixels")))
    return out


# ---- commit -----------------------------------------------------------------------------------------------
def success_record(run_id: str, run: str, manifest: Dict, parts: List[Dict], attempt: Dict) -> Dict:
    """The ``_SUCCESS.json`` body: files, rows, status counts, the most frequent errors, stage seconds (summed
    over images), timings. ``parts``: one stats dict per committed part (write results or footers)."""
    by_status: collections.Counter = collections.Counter()
    stages: collections.Counter = collections.Counter()
    errors: Dict[Tuple[str, str], List] = {}
    for p in parts:
        by_status.update(p["by_status"])
        stages.update(p["stage_seconds"])
        for status, message, count, example in p.get("errors", []):
            errors.setdefault((status, message), [status, message, 0, example])[2] += count
    top = sorted(errors.values(), key=lambda g: (-g[2], g[0], g[1]))[:TOP_ERRORS]
    parts = sorted(parts, key=lambda p: p["shard"])
    return dict(run_id=run_id, run_uri=run, schema_version=SCHEMA_VERSION, layout=layout.LAYOUT_VERSION,
                job_hash=layout.job_hash_of(manifest), segmenter_hash=manifest["provenance"].get("segmenter_hash"),
                files=[{"name": p["name"], "rows": p["rows"]} for p in parts],
                rows=sum(p["rows"] for p in parts), by_status=dict(by_status),
                top_errors=[dict(status=s, message=m, count=c, example=e) for s, m, c, e in top],
                stage_seconds_summed=dict(stages), attempt=attempt, categories=manifest["categories"],
                excluded_category_ids=manifest["excluded_category_ids"], provenance=manifest["provenance"],
                config=manifest["config"], created_at=manifest["created_at"],
                **ignored_summary(parts, ((manifest.get("config") or {}).get("job") or {}).get("ignore_below")))


def write_success(run: str, record: Dict) -> bool:
    return storage.write_json_new(storage.join(run, layout.SUCCESS), record)
