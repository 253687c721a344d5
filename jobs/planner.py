"""Planning a run without the index in the driver: the inputs → the run's plan files, distributed over Ray.

    listing (driver, streamed) ─► index tasks, one per chunk of listed images or per container file: index rows
                                  (``jobs.inputs.INDEX_SCHEMA``) hash-partitioned by image_id into P buckets,
                                  kept in the object store
    committed parts of this config ─► done tasks, one per group of part files: the ids whose rows are final
                                  (ok, or a failure the retry policy does not retry), the same P buckets
    reduce tasks, one per bucket: same URI listed twice kept once, duplicate-id check, anti-join with the
                                  done ids, sort by image_id, write ``plan-<bucket>.parquet``; return its row count
    driver: the plan is the bucket files in order; shard k is global plan rows [k * shard_size, (k+1) * shard_size)

The driver holds object references and per-file counts: memory O(input files + buckets), never O(images). An
image prefix is listed once, page by page (``pipeline.uri.iter_files``); ``--input-format auto`` decides the
kind from that same listing.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import zlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import storage
from jobs.inputs import INDEX_SCHEMA, InputError, InputOptions, distinct_inputs, index_unit, scan_input
from pipeline import uri as uris
from schemas import layout

log = logging.getLogger("reslabel.plan")
CHUNK_ROWS = 100_000  # listed images per index task
MAX_BUCKETS = 64  # reduce tasks (and plan files) of a large input
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


def split_by_bucket(table: pa.Table, buckets: int) -> List[pa.Table]:
    """``table`` (with an ``image_id`` column) as ``buckets`` tables, row order kept within each."""
    which = buckets_of(table.column("image_id"), buckets)
    return [table.filter(pa.array(which == b)) for b in range(buckets)]


def _returns(value: Sequence):
    """A task's results as Ray returns them: the value itself when there is one, else a tuple."""
    return value[0] if len(value) == 1 else tuple(value)


def index_task(kind: str, unit, options: InputOptions, buckets: int, s3_endpoint: Optional[str]):
    """Ray task: the index rows of one unit in ``buckets`` tables, then their row count (``buckets + 1`` returns)."""
    storage.apply_endpoint(s3_endpoint)
    table = index_unit(kind, unit, options)
    return _returns([*split_by_bucket(table, buckets), table.num_rows])


def done_task(parts: Sequence[str], retry: Sequence[str], buckets: int, s3_endpoint: Optional[str]):
    """Ray task: ids of the rows in committed ``parts`` whose status is final under ``retry``, in ``buckets``."""
    storage.apply_endpoint(s3_endpoint)
    tables = []
    for uri in parts:
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=["image_id", "status"])
        final = pc.invert(pc.is_in(t.column("status"), value_set=pa.array(list(retry), pa.string())))
        tables.append(t.filter(final).select(["image_id"]).cast(DONE_SCHEMA))
    done = pa.concat_tables(tables) if tables else DONE_SCHEMA.empty_table()
    return _returns(split_by_bucket(done, buckets))


def reduce_task(bucket: int, plan_dir: str, name: str, shard_size: int, what: str, s3_endpoint: Optional[str],
                n_candidates: int, *tables: pa.Table) -> Dict:
    """Ray task: one bucket's candidates (the first ``n_candidates`` tables) minus the done ids (the rest),
    distinct, checked for duplicate ids, sorted by image_id, written to ``plan_dir/name`` if any remain."""
    storage.apply_endpoint(s3_endpoint)
    cand = pa.concat_tables([t.cast(INDEX_SCHEMA) for t in tables[:n_candidates]]) if n_candidates else \
        INDEX_SCHEMA.empty_table()
    cand = distinct_inputs(cand, what)
    found = cand.num_rows
    done = [t for t in tables[n_candidates:] if t.num_rows]
    if done and found:
        seen = pa.concat_tables(done).column("image_id").combine_chunks()
        cand = cand.filter(pc.invert(pc.is_in(cand.column("image_id"), value_set=seen)))
    if cand.num_rows:
        buf = io.BytesIO()
        pq.write_table(cand, buf, compression="zstd", row_group_size=shard_size)
        uris.write_bytes(storage.join(plan_dir, name), buf.getvalue())
    return dict(bucket=bucket, rows=cand.num_rows, candidates=found)


@dataclasses.dataclass
class Indexed:
    """The index of one input, in the object store: per unit, ``buckets`` table refs and a row-count ref."""

    uri: str
    kind: str
    buckets: int
    units: List[List]  # per unit: [bucket 0 ref, ..., bucket P-1 ref, count ref]

    def rows(self) -> int:
        """Index rows found (before repeated URIs are collapsed); waits for the index tasks."""
        import ray

        return int(sum(ray.get([u[-1] for u in self.units])))


class Planner:
    """Runs the index → done → reduce tasks of one run's planning (see the module docstring)."""

    def __init__(self, options: InputOptions, retry: Sequence[str], s3_endpoint: Optional[str]):
        self.options, self.retry, self.s3_endpoint = options, tuple(retry), s3_endpoint

    def index(self, uri: str, fmt: str) -> Indexed:
        """List ``uri`` once and start one index task per image chunk or container file (see ``scan_input``).
        Raises ``InputError`` when the input holds no inputs."""
        pending: List[List] = []
        images: List[List] = []
        state = {"buckets": None}

        def on_images(chunk: List) -> None:  # streamed from the listing; a single chunk means a single bucket
            pending.append(chunk)
            if state["buckets"] is None and len(pending) < 2:
                return
            state["buckets"] = state["buckets"] or MAX_BUCKETS
            images.extend(self._index_unit("images", c, state["buckets"]) for c in pending)
            pending.clear()

        kind, files = scan_input(uri, fmt, on_images, CHUNK_ROWS)
        if kind == "images":
            buckets = state["buckets"] or 1
            units = images + [self._index_unit("images", c, buckets) for c in pending]
        else:  # a prefix that also holds containers is labeled as containers (see scan_input)
            buckets = 1 if len(files) <= 1 else min(MAX_BUCKETS, len(files))
            units = [self._index_unit(kind, f, buckets) for f in files]
        indexed = Indexed(uri, kind, buckets, units)
        if not units or indexed.rows() == 0:
            raise InputError(f"input {uri} ({kind}): no inputs found")
        return indexed

    def _index_unit(self, kind: str, unit, buckets: int) -> List:
        import ray

        refs = ray.remote(index_task).options(num_returns=buckets + 1).remote(
            kind, unit, self.options, buckets, self.s3_endpoint)
        return list(refs)

    def write_plan(self, indexed: Indexed, run: str, attempt: str, shard_size: int,
                   done_parts: Sequence[str]) -> PlannedInputs:
        """Write ``run/_plan/<attempt>/plan-*.parquet``: the indexed inputs that no part in ``done_parts`` holds a
        final row for, one sorted file per bucket."""
        import ray

        buckets = indexed.buckets
        done = ray.remote(done_task)
        done_refs = [self._as_list(done.options(num_returns=buckets).remote(
            list(done_parts[i:i + DONE_GROUP]), self.retry, buckets, self.s3_endpoint))
            for i in range(0, len(done_parts), DONE_GROUP)]
        plan_dir = storage.join(run, layout.PLAN_DIR, attempt)
        reduce = ray.remote(reduce_task)
        results = ray.get([reduce.remote(b, plan_dir, layout.plan_file_name(b), shard_size, indexed.uri,
                                         self.s3_endpoint, len(indexed.units), *[u[b] for u in indexed.units],
                                         *[d[b] for d in done_refs])
                           for b in range(buckets)])
        candidates = sum(r["candidates"] for r in results)
        planned = [dict(name=f"{layout.PLAN_DIR}/{attempt}/{layout.plan_file_name(r['bucket'])}", rows=r["rows"])
                   for r in results if r["rows"]]
        out = PlannedInputs(indexed.kind, planned, candidates, candidates - sum(f["rows"] for f in planned))
        log.info("planned %d of %d inputs (%s) in %d plan files; %d already labeled", out.rows, candidates,
                 indexed.kind, len(planned), out.excluded)
        return out

    @staticmethod
    def _as_list(refs) -> List:
        return refs if isinstance(refs, list) else [refs]


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
