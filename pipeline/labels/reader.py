"""Read a labeling run: rows, per-class masks, label maps (pyarrow + numpy + pycocotools; no Ray).

A run is a directory (local path or URI such as ``s3://bucket/out/runs/<run_id>``, taken literally) holding
``part-*.parquet`` files in ``schemas.LABEL_SCHEMA`` and ``_SUCCESS.json``, written last. A run
without ``_SUCCESS.json`` is partial (a job still writing, or one that died) and is refused unless
``allow_partial=True``. Runs written in schema 1.x read the same: their ``config_hash`` column comes back as
``job_hash`` and ``segmenter_hash`` as null.

    run = open_run("out/runs/2026-11-23T20-00-00")
    for row, labels in run.label_maps(status="ok"):   # labels: (H, W) int32, 255 = no segment
        ...
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.io import uri as uris
from pipeline.labels.rle import decode_rle
from schemas import LABEL_SCHEMA, LEGACY_COLUMNS, LEGACY_SCHEMA, layout

SUCCESS_FILE = layout.SUCCESS
UNLABELED = 255  # label-map value of pixels that no segment covers
CATEGORY_KEYS = (layout.META_CATEGORIES, "reslabel.class_names", "categories")  # JSON list of class names


class RunNotCommitted(RuntimeError):
    """The run has no ``_SUCCESS.json``: it is still being written or its job failed."""


@dataclasses.dataclass
class Run:
    """An opened run. ``files`` are the Parquet parts (paths inside ``fs``, sorted)."""

    uri: str
    fs: fsspec.AbstractFileSystem
    path: str
    files: List[str]
    manifest: Optional[Dict[str, Any]]  # parsed _SUCCESS.json, None when partial
    metadata: Dict[str, str]  # Parquet key-value metadata of the first part

    @property
    def committed(self) -> bool:
        return self.manifest is not None

    @functools.cached_property
    def categories(self) -> List[str]:
        """Class names in category-id order, from ``_SUCCESS.json`` or the Parquet metadata.

        Falls back to the names seen in the segments (ids never seen become ``"class_<id>"``).
        """
        for source in ({k: json.dumps(v) for k, v in (self.manifest or {}).items()}, self.metadata):
            names = _categories_from(source)
            if names:
                return names
        seen: Dict[int, str] = {}
        for row in self.rows(columns=["segments"]):
            for s in row["segments"]:
                seen.setdefault(s["category_id"], s["category_name"])
        return [seen.get(i, f"class_{i}") for i in range(max(seen, default=-1) + 1)]

    @functools.cached_property
    def excluded_category_ids(self) -> List[int]:
        """Class ids the job left out of the segments (e.g. background): their pixels read back as 255.

        From ``_SUCCESS.json``, else the parts' metadata, else the run's registration (``_plan.json``, or a
        layout-1 ``_plan.parquet``); [] if unknown.
        """
        if self.manifest and "excluded_category_ids" in self.manifest:
            return [int(i) for i in self.manifest["excluded_category_ids"]]
        if layout.META_EXCLUDED in self.metadata:
            return [int(i) for i in json.loads(self.metadata[layout.META_EXCLUDED])]
        registration = f"{self.path}/{layout.PLAN_MANIFEST}"
        if self.fs.exists(registration):
            with self.fs.open(registration, "rb") as f:
                return [int(i) for i in json.loads(f.read().decode("utf-8")).get("excluded_category_ids", [])]
        legacy = f"{self.path}/{layout.LEGACY_PLAN}"
        if self.fs.exists(legacy):
            meta = ds.dataset(legacy, format="parquet", filesystem=self.fs).schema.metadata or {}
            if layout.LEGACY_PLAN_KEY in meta:
                return [int(i) for i in json.loads(meta[layout.LEGACY_PLAN_KEY]).get("excluded_category_ids", [])]
        return []

    @property
    def schema_version(self) -> str:
        """The parts' ``reslabel.schema_version`` ("1.0" for runs that did not record one)."""
        return self.metadata.get(layout.META_SCHEMA_VERSION, "1.0")

    @property
    def legacy(self) -> bool:
        """Written in schema 1.x (a ``config_hash`` column instead of ``job_hash`` + ``segmenter_hash``)."""
        return self.schema_version.split(".")[0] == "1"

    def dataset(self) -> ds.Dataset:
        """The run's parts as written, a ``pyarrow.dataset.Dataset`` (``.to_table()``, ``.to_batches()``, filters):
        ``schemas.LABEL_SCHEMA``, or ``schemas.LEGACY_SCHEMA`` for a schema-1.x run (``rows``/``table`` rename)."""
        return ds.dataset(self.files, schema=LEGACY_SCHEMA if self.legacy else LABEL_SCHEMA, format="parquet",
                          filesystem=self.fs)

    def _projection(self, columns: Optional[Sequence[str]]) -> Optional[Dict[str, Any]]:
        """Scanner columns in the current schema's names (None: all, as written, for a current run)."""
        if not self.legacy:
            return list(columns) if columns else None
        old_name = {new: old for old, new in LEGACY_COLUMNS.items()}
        out = {}
        for name in columns or LABEL_SCHEMA.names:
            if name == "segmenter_hash":
                out[name] = ds.scalar(None).cast(pa.string())  # not recorded by schema 1.x
            else:
                out[name] = ds.field(old_name.get(name, name))
        return out

    def table(self, columns: Optional[Sequence[str]] = None, **filters: Any) -> pa.Table:
        """All rows passing the row filters (see ``rows``) as one Arrow table, in the current schema's names."""
        return self.dataset().to_table(columns=self._projection(columns), filter=_expr(**filters))

    def rows(
        self,
        status: Union[str, Sequence[str], None] = None,
        image_ids: Optional[Iterable[str]] = None,
        categories: Optional[Iterable[Union[int, str]]] = None,
        min_score: Optional[float] = None,
        columns: Optional[Sequence[str]] = None,
        batch_size: int = 256,
    ) -> Iterator[Dict[str, Any]]:
        """Yield rows as dicts, streaming batch by batch.

        ``status`` and ``image_ids`` filter rows; ``categories`` (ids or names) and ``min_score`` filter
        the segments of each row, and a row left with no segment is skipped when either is given.
        """
        cols = list(columns) if columns else None
        if cols and (categories is not None or min_score is not None) and "segments" not in cols:
            cols.append("segments")
        wanted = category_ids(categories, self.categories) if categories is not None else None
        scanner = self.dataset().scanner(columns=self._projection(cols), filter=_expr(status, image_ids),
                                         batch_size=batch_size)
        for batch in scanner.to_batches():
            for row in batch.to_pylist():
                if wanted is None and min_score is None:
                    yield row
                    continue
                row["segments"] = [s for s in row["segments"] if keep_segment(s, wanted, min_score)]
                if row["segments"]:
                    yield row

    def label_maps(self, fill: int = UNLABELED, **filters: Any) -> Iterator[Tuple[Dict[str, Any], np.ndarray]]:
        """Yield ``(row, label_map(row, fill))`` for ``ok`` rows; same filters as ``rows``."""
        for row in self.rows(**filters):
            if row["height"] is not None and row["status"] == "ok":
                yield row, label_map(row, fill)

    def background_fill(self) -> int:
        """The value that restores the segmenter's full label map: the single excluded class id, else 255."""
        excluded = self.excluded_category_ids
        return excluded[0] if len(excluded) == 1 else UNLABELED


def open_run(uri: str, allow_partial: bool = False, storage_options: Optional[Dict[str, Any]] = None) -> Run:
    """Open the run directory ``uri`` (local path or URI, taken literally: ``pipeline.io.uri``).

    Raises ``FileNotFoundError`` when no Parquet part exists and ``RunNotCommitted`` when
    ``_SUCCESS.json`` is missing and ``allow_partial`` is false.
    """
    fs, path = uris.filesystem(uri, **(storage_options or {}))
    path = path.rstrip("/")
    files = _part_files(fs, path)
    manifest = None
    if fs.exists(f"{path}/{SUCCESS_FILE}"):
        with fs.open(f"{path}/{SUCCESS_FILE}", "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        if manifest.get("files"):  # the committed parts only, as the job recorded them
            files = [f"{path}/{entry['name'] if isinstance(entry, dict) else entry}" for entry in manifest["files"]]
    elif not allow_partial:
        raise RunNotCommitted(
            f"{uri} has no {SUCCESS_FILE}: the run is not committed (still running or failed). "
            "Pass allow_partial=True (CLI: --allow-partial) to read the parts written so far."
        )
    if not files and manifest is None:
        raise FileNotFoundError(f"{uri}: no part-*.parquet files and no {SUCCESS_FILE}; is this a run directory?")
    metadata: Dict[str, str] = {}
    if files:
        meta = ds.dataset(files[0], format="parquet", filesystem=fs).schema.metadata or {}
        metadata = {k.decode(): v.decode() for k, v in meta.items()}
    return Run(uri=uri, fs=fs, path=path, files=files, manifest=manifest, metadata=metadata)


def _part_files(fs: fsspec.AbstractFileSystem, path: str) -> List[str]:
    """The ``part-*.parquet`` files directly in ``path`` (a listing, not a glob: the path itself may hold ``*[?``)."""
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(p for p in names if layout.shard_of(p) is not None)


def decode_segment(segment: Dict[str, Any]) -> np.ndarray:
    """A segment's COCO RLE → (H, W) bool mask."""
    return decode_rle(segment["rle"]).astype(bool)


def masks(row: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """Per-segment binary masks of one row.

    Returns:
        ``(category_ids (K,) int32, masks (K, H, W) bool)``; K = 0 gives an empty (0, H, W) stack.
    """
    h, w = int(row["height"] or 0), int(row["width"] or 0)
    segs = row["segments"]
    ids = np.array([s["category_id"] for s in segs], dtype=np.int32)
    stack = np.stack([decode_segment(s) for s in segs]) if segs else np.zeros((0, h, w), dtype=bool)
    return ids, stack


def ignore_mask(row: Dict[str, Any]) -> np.ndarray:
    """(H, W) bool: the row's ignore region (``--ignore-below``); all False when the run has none."""
    h, w = int(row["height"]), int(row["width"])
    rle = row.get("ignore")
    return decode_rle(rle).astype(bool) if rle else np.zeros((h, w), dtype=bool)


def label_map(row: Dict[str, Any], fill: int = UNLABELED) -> np.ndarray:
    """One row → (H, W) int32 class-index map; pixels no segment covers get ``fill``, pixels of the row's
    ignore region (``--ignore-below``) get 255 whatever ``fill`` is.

    Segments of a run do not overlap (they come from an argmax); if they did, the higher score wins.
    """
    h, w = int(row["height"]), int(row["width"])
    out = np.full((h, w), fill, dtype=np.int32)
    for s in sorted(row["segments"], key=lambda s: s["score"]):
        m = decode_segment(s)
        if m.shape != (h, w):
            raise ValueError(f"{row['image_id']}: segment mask {m.shape} differs from image size {(h, w)}")
        out[m] = s["category_id"]
    if row.get("ignore"):
        out[ignore_mask(row)] = UNLABELED
    return out


def _categories_from(meta: Dict[str, str]) -> Optional[List[str]]:
    for key in CATEGORY_KEYS:
        if key in meta:
            value = json.loads(meta[key])
            if isinstance(value, list) and value:
                return [v["name"] if isinstance(v, dict) else str(v) for v in value]
    return None


def _expr(status: Union[str, Sequence[str], None] = None, image_ids: Optional[Iterable[str]] = None):
    expr = None
    if status is not None:
        values = [status] if isinstance(status, str) else list(status)
        expr = ds.field("status").isin([getattr(v, "value", v) for v in values])
    if image_ids is not None:
        e = ds.field("image_id").isin(list(image_ids))
        expr = e if expr is None else expr & e
    return expr


def category_ids(categories: Iterable[Union[int, str]], names: List[str]) -> set:
    ids = set()
    for c in categories:
        if isinstance(c, str):
            if c not in names:
                raise KeyError(f"category {c!r} not in this run's vocabulary: {names}")
            ids.add(names.index(c))
        else:
            ids.add(int(c))
    return ids


def keep_segment(seg: Dict[str, Any], wanted: Optional[set], min_score: Optional[float]) -> bool:
    return (wanted is None or seg["category_id"] in wanted) and (min_score is None or seg["score"] >= min_score)


def class_pixel_totals(run: Run, fill: int = UNLABELED, **filters: Any) -> np.ndarray:
    """(C,) int64 pixels per class over the run's ``ok`` rows, from the stored ``area`` (no decoding).

    With ``fill`` a class id (see ``Run.background_fill``), pixels no segment covers count for it.
    """
    import pyarrow.compute as pc

    filters["status"] = "ok"
    totals = np.zeros(len(run.categories), dtype=np.int64)
    table = run.table(columns=["width", "height", "segments"], **filters)
    segs = pc.list_flatten(table.column("segments"))
    ids = pc.struct_field(segs, "category_id").to_numpy(zero_copy_only=False)
    areas = pc.struct_field(segs, "area").to_numpy(zero_copy_only=False)
    np.add.at(totals, ids[ids < len(totals)], areas[ids < len(totals)])
    if 0 <= fill < len(totals):
        sizes = pc.multiply(table.column("width").cast("int64"), table.column("height").cast("int64"))
        totals[fill] += int(pc.sum(sizes).as_py() or 0) - int(areas.sum())
    return totals
