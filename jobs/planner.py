"""Planning a run without the index in the driver: the inputs → the run's plan files, distributed over Ray.

    listing (driver, streamed) ─► index tasks, one per chunk of listed images or per group of container files (at
                                  most MAX_UNITS groups): index rows (``jobs.inputs.INDEX_SCHEMA``) hash-partitioned
                                  by image_id into P buckets,
                                  written as ``OUTPUT/_planning/<attempt>/unit-<n>.parquet``, one row group per bucket
    committed parts of this config ─► done tasks, one per group of part files: the ids whose rows are final
                                  (ok, or a failure the retry policy does not retry), the same P buckets, written
                                  as ``done-<n>.parquet``
    reduce tasks, one per bucket: reads its row group of every unit and done file; same URI listed twice kept once,
                                  duplicate-id check, anti-join with the done ids, sort by image_id, writes the
                                  run's ``_plan/<attempt>/plan-<bucket>.parquet``; returns its row count
    driver: the plan is the bucket files in order; shard k is global plan rows [k * shard_size, (k+1) * shard_size)

Tasks exchange files, not objects: Ray would inline small task results into their owner, the driver. What the
driver holds is a few integers per (unit, bucket): memory O(input files + buckets), never O(images). An image
prefix is listed once, page by page (``pipeline.io.uri.iter_files``); ``--input-format auto`` decides the kind from
that same listing. The staging files are deleted once the plan is written.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import zlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import storage
from jobs.containers import index_unit
from jobs.inputs import INDEX_SCHEMA, InputError, InputOptions, distinct_inputs, scan_input
from pipeline.io import uri as uris
from schemas import layout

log = logging.getLogger("reslabel.plan")
CHUNK_ROWS = 100_000  # listed images per index task
MAX_BUCKETS = 64  # reduce tasks (and plan files) of a large input
MAX_UNITS = 128  # container files are grouped into at most this many index tasks
DONE_GROUP = 64  # committed part files per done task
DONE_SCHEMA = pa.schema([pa.field("image_id", pa.string(), nullable=False)])


@dataclasses.dataclass(frozen=True)
class PlannedInputs:
    """What planning wrote: the plan files in order (name relative to the run, rows), and the counts."""

    kind: str
    files: List[Dict]  # [{"name": "_plan/<attempt>/plan-00003.parquet", "rows": n}], rows > 0, bucket order
    candidates: int  # distinct inputs found
    excluded: int  # of them, already labeled by committed runs of this config

    @property
    def rows(self) -> int:
        return sum(f["rows"] for f in self.files)


def buckets_of(ids: pa.Array, buckets: int) -> np.ndarray:
    """Bucket of each image id: crc32 of its UTF-8 bytes modulo ``buckets`` (stable across processes)."""
    if buckets == 1:
        return np.zeros(len(ids), dtype=np.int64)
    return np.fromiter((zlib.crc32(i.encode("utf-8")) % buckets for i in ids.to_pylist()), dtype=np.int64,
                       count=len(ids))


def write_buckets(table: pa.Table, buckets: int, uri: str) -> Dict:
    """Write ``table`` (with an ``image_id`` column) to ``uri`` with one row group per non-empty bucket, in bucket
    order. Returns ``{"uri", "rows", "groups": {bucket: row group}}`` (no file when ``table`` is empty)."""
    which = buckets_of(table.column("image_id"), buckets)
    groups: Dict[int, int] = {}
    if table.num_rows:
        buf = io.BytesIO()
        with pq.ParquetWriter(buf, table.schema, compression="zstd") as writer:
            for b in range(buckets):
                part = table.filter(pa.array(which == b))
                if part.num_rows:
                    writer.write_table(part, row_group_size=max(part.num_rows, 1))
                    groups[b] = len(groups)
        uris.write_bytes(uri, buf.getvalue())
    return dict(uri=uri, rows=table.num_rows, groups=groups)


def read_bucket(sources: Sequence[Tuple[str, int]], schema: pa.Schema) -> pa.Table:
    """Concatenate row group ``g`` of each ``(uri, g)``."""
    tables = []
    for uri, group in sources:
        with storage.open_read(uri) as f:
            tables.append(pq.ParquetFile(f).read_row_group(group).cast(schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def index_task(kind: str, unit, options: InputOptions, buckets: int, uri: str, s3_endpoint: Optional[str]) -> Dict:
    """Ray task: the index rows of one unit, written by bucket to ``uri`` (see ``write_buckets``)."""
    storage.apply_endpoint(s3_endpoint)
    return write_buckets(index_unit(kind, unit, options), buckets, uri)


def done_task(parts: Sequence[str], retry: Sequence[str], buckets: int, uri: str, s3_endpoint: Optional[str]) -> Dict:
    """Ray task: ids of the rows in committed ``parts`` whose status is final under ``retry``, by bucket to ``uri``."""
    storage.apply_endpoint(s3_endpoint)
    tables = []
    for part in parts:
        with storage.open_read(part) as f:
            t = pq.read_table(f, columns=["image_id", "status"])
        final = pc.invert(pc.is_in(t.column("status"), value_set=pa.array(list(retry), pa.string())))
        tables.append(t.filter(final).select(["image_id"]).cast(DONE_SCHEMA))
    return write_buckets(pa.concat_tables(tables) if tables else DONE_SCHEMA.empty_table(), buckets, uri)


def reduce_task(bucket: int, candidates: Sequence[Tuple[str, int]], done: Sequence[Tuple[str, int]], plan_uri: str,
                shard_size: int, what: str, s3_endpoint: Optional[str]) -> Dict:
    """Ray task: one bucket's candidates minus the done ids, distinct, checked for duplicate ids, sorted by
    image_id, written to ``plan_uri`` if any remain. Returns ``{"bucket", "rows", "candidates"}``."""
    storage.apply_endpoint(s3_endpoint)
    cand = distinct_inputs(read_bucket(candidates, INDEX_SCHEMA), what)
    found = cand.num_rows
    if done and found:
        seen = read_bucket(done, DONE_SCHEMA).column("image_id").combine_chunks()
        cand = cand.filter(pc.invert(pc.is_in(cand.column("image_id"), value_set=seen)))
    if cand.num_rows:
        buf = io.BytesIO()
        pq.write_table(cand, buf, compression="zstd", row_group_size=shard_size)
        uris.write_bytes(plan_uri, buf.getvalue())
    return dict(bucket=bucket, rows=cand.num_rows, candidates=found)


@dataclasses.dataclass
class Indexed:
    """The index of one input, staged in files: per unit, its file and the row group of each bucket."""

    uri: str
    kind: str
    buckets: int
    staging: str  # OUTPUT/_planning/<attempt>
    units: List[Dict]  # write_buckets results

    @property
    def rows(self) -> int:
        """Index rows found (before repeated URIs are collapsed)."""
        return sum(u["rows"] for u in self.units)


class Planner:
    """Runs the index → done → reduce tasks of one run's planning (see the module docstring)."""

    def __init__(self, options: InputOptions, retry: Sequence[str], s3_endpoint: Optional[str]):
        self.options, self.retry, self.s3_endpoint = options, tuple(retry), s3_endpoint

    def index(self, uri: str, fmt: str, staging: str) -> Indexed:
        """List ``uri`` once and run one index task per image chunk or container file (see ``scan_input``),
        staging their output under ``staging``. Raises ``InputError`` when the input holds no inputs."""
        import ray

        pending: List[List] = []
        refs: List = []
        state = {"buckets": None}
        task = ray.remote(index_task)

        def submit(kind: str, unit, buckets: int) -> None:
            name = storage.join(staging, f"unit-{len(refs):06d}.parquet")
            refs.append(task.remote(kind, unit, self.options, buckets, name, self.s3_endpoint))

        def on_images(chunk: List) -> None:  # streamed from the listing; a single chunk means a single bucket
            pending.append(chunk)
            if state["buckets"] is None and len(pending) < 2:
                return
            state["buckets"] = state["buckets"] or MAX_BUCKETS
            for c in pending:
                submit("images", c, state["buckets"])
            pending.clear()

        kind, files = scan_input(uri, fmt, on_images, CHUNK_ROWS)
        if kind == "images":
            buckets = state["buckets"] or 1
            for c in pending:
                submit("images", c, buckets)
        else:  # a prefix that also holds containers is labeled as containers (see scan_input)
            refs.clear()
            per_unit = -(-len(files) // MAX_UNITS)  # many small files share a task: fewer files for reduce to read
            units = [files[i:i + per_unit] for i in range(0, len(files), per_unit)]
            buckets = 1 if len(units) <= 1 else min(MAX_BUCKETS, len(units))
            for unit in units:
                submit(kind, unit, buckets)
        indexed = Indexed(uri, kind, buckets, staging, ray.get(refs))
        if indexed.rows == 0:
            raise InputError(f"input {uri} ({kind}): no inputs found")
        return indexed

    def write_plan(self, indexed: Indexed, run: str, attempt: str, shard_size: int,
                   done_parts: Sequence[str]) -> PlannedInputs:
        """Write ``run/_plan/<attempt>/plan-*.parquet``: the indexed inputs that no part in ``done_parts`` holds a
        final row for, one sorted file per bucket."""
        import ray

        buckets = indexed.buckets
        task = ray.remote(done_task)
        done = ray.get([task.remote(list(done_parts[i:i + DONE_GROUP]), self.retry, buckets,
                                    storage.join(indexed.staging, f"done-{i // DONE_GROUP:06d}.parquet"),
                                    self.s3_endpoint)
                        for i in range(0, len(done_parts), DONE_GROUP)])
        reduce = ray.remote(reduce_task)

        def sources(files: List[Dict], b: int) -> List[Tuple[str, int]]:
            return [(f["uri"], f["groups"][b]) for f in files if b in f["groups"]]
        results = ray.get([reduce.remote(b, sources(indexed.units, b), sources(done, b),
                                         storage.join(run, layout.PLAN_DIR, attempt, layout.plan_file_name(b)),
                                         shard_size, indexed.uri, self.s3_endpoint)
                           for b in range(buckets)])
        candidates = sum(r["candidates"] for r in results)
        planned = [dict(name=f"{layout.PLAN_DIR}/{attempt}/{layout.plan_file_name(r['bucket'])}", rows=r["rows"])
                   for r in results if r["rows"]]
        out = PlannedInputs(indexed.kind, planned, candidates, candidates - sum(f["rows"] for f in planned))
        log.info("planned %d of %d inputs (%s) in %d plan files; %d already labeled", out.rows, candidates,
                 indexed.kind, len(planned), out.excluded)
        return out

    @staticmethod
    def discard(staging: str) -> None:
        """Delete the staging files (best effort: a leftover is harmless, ``_planning`` holds no run)."""
        try:
            for uri in storage.list_dir(staging):
                uris.remove(uri)
            if not storage.is_remote(staging) and os.path.isdir(staging):
                os.rmdir(staging)  # object stores have no empty folders
        except OSError as e:
            log.warning("could not delete the planning files under %s: %s", staging, e)


@dataclasses.dataclass(frozen=True)
class PlanLocator:
    """Where shard k's plan rows are: the plan files (URIs) with their global first rows (small; shipped to
    every read task)."""

    files: Tuple[str, ...]  # plan file URIs
    starts: Tuple[int, ...]  # global index of each file's first row
    rows: int
    shard_size: int

    @classmethod
    def of(cls, run: str, files: Iterable[Dict], shard_size: int) -> "PlanLocator":
        names, starts, total = [], [], 0
        for f in files:
            names.append(storage.join(run, *f["name"].split("/")))
            starts.append(total)
            total += int(f["rows"])
        return cls(tuple(names), tuple(starts), total, shard_size)

    @property
    def shards(self) -> int:
        return -(-self.rows // self.shard_size)

    def pieces(self, shard: int) -> List[Tuple[str, int, int]]:
        """``(plan file URI, first row in it, row count)`` covering shard ``shard``, in order."""
        lo, hi = shard * self.shard_size, min((shard + 1) * self.shard_size, self.rows)
        out = []
        for uri, start, end in zip(self.files, self.starts, self.starts[1:] + (self.rows,)):
            a, b = max(lo, start), min(hi, end)
            if a < b:
                out.append((uri, a - start, b - a))
        return out

    def read(self, shard: int) -> pa.Table:
        """The plan rows of ``shard`` (``INDEX_SCHEMA``), read by row group from its plan file(s)."""
        tables = []
        for uri, first, count in self.pieces(shard):
            with storage.open_read(uri) as f:
                pf = pq.ParquetFile(f)
                groups, offset, skip = [], 0, None
                for g in range(pf.num_row_groups):
                    n = pf.metadata.row_group(g).num_rows
                    if offset + n > first and offset < first + count:
                        groups.append(g)
                        skip = first - offset if skip is None else skip
                    offset += n
                t = pf.read_row_groups(groups).slice(skip or 0, count)
            tables.append(t.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA))
        return pa.concat_tables(tables)
