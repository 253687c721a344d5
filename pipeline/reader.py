"""Read a labeling run: rows, per-class masks, label maps (pyarrow + numpy + pycocotools; no Ray).

A run is a directory (local path or any fsspec URI such as ``s3://bucket/out/runs/<run_id>``) holding
``part-*.parquet`` files in ``schemas.LABEL_SCHEMA`` and ``_SUCCESS.json``, written last. A run
without ``_SUCCESS.json`` is partial (a job still writing, or one that died) and is refused unless
``allow_partial=True``.

    run = open_run("out/runs/2026-11-23T20-00-00")
    for row, labels in run.label_maps(status="ok"):   # labels: (H, W) int32, 255 = no segment
        ...
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from torch.utils import data as torch_data

from pipeline.decode import decode_image
from pipeline.rle import decode_rle
from schemas import LABEL_SCHEMA

SUCCESS_FILE = "_SUCCESS.json"
UNLABELED = 255  # label-map value of pixels that no segment covers
CATEGORY_KEYS = ("reslabel.categories", "reslabel.class_names", "categories")  # JSON list of class names


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

    @property
    def categories(self) -> List[str]:
        """Class names in category-id order, from the Parquet metadata (or the manifest).

        Falls back to the names seen in the segments (ids never seen become ``"class_<id>"``).
        """
        for source in (self.metadata, {k: json.dumps(v) for k, v in (self.manifest or {}).items()}):
            names = _categories_from(source)
            if names:
                return names
        seen: Dict[int, str] = {}
        for row in self.rows(columns=["segments"]):
            for s in row["segments"]:
                seen.setdefault(s["category_id"], s["category_name"])
        return [seen.get(i, f"class_{i}") for i in range(max(seen, default=-1) + 1)]

    def dataset(self) -> ds.Dataset:
        """The run as a ``pyarrow.dataset.Dataset`` (``.to_table()``, ``.to_batches()``, filters)."""
        return ds.dataset(self.files, schema=LABEL_SCHEMA, format="parquet", filesystem=self.fs)

    def table(self, columns: Optional[Sequence[str]] = None, **filters: Any) -> pa.Table:
        """All rows passing the row filters (see ``rows``) as one Arrow table."""
        return self.dataset().to_table(columns=list(columns) if columns else None, filter=_expr(**filters))

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
        wanted = _category_ids(categories, self.categories) if categories is not None else None
        scanner = self.dataset().scanner(columns=cols, filter=_expr(status, image_ids), batch_size=batch_size)
        for batch in scanner.to_batches():
            for row in batch.to_pylist():
                if wanted is None and min_score is None:
                    yield row
                    continue
                row["segments"] = [s for s in row["segments"] if _keep(s, wanted, min_score)]
                if row["segments"]:
                    yield row

    def label_maps(self, **filters: Any) -> Iterator[Tuple[Dict[str, Any], np.ndarray]]:
        """Yield ``(row, label_map(row))`` for rows with a known size (``ok`` rows); same filters as ``rows``."""
        for row in self.rows(**filters):
            if row["height"] is not None and row["status"] == "ok":
                yield row, label_map(row)


def open_run(uri: str, allow_partial: bool = False, storage_options: Optional[Dict[str, Any]] = None) -> Run:
    """Open the run directory ``uri`` (local path or fsspec URI).

    Raises ``FileNotFoundError`` when no Parquet part exists and ``RunNotCommitted`` when
    ``_SUCCESS.json`` is missing and ``allow_partial`` is false.
    """
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    path = path.rstrip("/")
    files = sorted(p for p in fs.glob(f"{path}/part-*.parquet"))
    manifest = None
    if fs.exists(f"{path}/{SUCCESS_FILE}"):
        with fs.open(f"{path}/{SUCCESS_FILE}", "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
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


def label_map(row: Dict[str, Any], fill: int = UNLABELED) -> np.ndarray:
    """One row → (H, W) int32 class-index map; pixels no segment covers get ``fill``.

    Segments of a run do not overlap (they come from an argmax); if they did, the higher score wins.
    """
    h, w = int(row["height"]), int(row["width"])
    out = np.full((h, w), fill, dtype=np.int32)
    for s in sorted(row["segments"], key=lambda s: s["score"]):
        m = decode_segment(s)
        if m.shape != (h, w):
            raise ValueError(f"{row['image_id']}: segment mask {m.shape} differs from image size {(h, w)}")
        out[m] = s["category_id"]
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


def _category_ids(categories: Iterable[Union[int, str]], names: List[str]) -> set:
    ids = set()
    for c in categories:
        if isinstance(c, str):
            if c not in names:
                raise KeyError(f"category {c!r} not in this run's vocabulary: {names}")
            ids.add(names.index(c))
        else:
            ids.add(int(c))
    return ids


def _keep(seg: Dict[str, Any], wanted: Optional[set], min_score: Optional[float]) -> bool:
    return (wanted is None or seg["category_id"] in wanted) and (min_score is None or seg["score"] >= min_score)


ImageSource = Union[None, str, Callable[[Dict[str, Any]], np.ndarray]]


def load_rgb(uri: str) -> np.ndarray:
    """Read an image (local path or fsspec URI) as (H, W, 3) uint8 RGB, decoded exactly as the labeling
    job decodes it (``pipeline.decode``: EXIF orientation applied). Raises ``ValueError`` if it fails."""
    with fsspec.open(uri, "rb") as f:
        decoded = decode_image(f.read(), max_pixels=2**62)
    if decoded.status != "ok":
        raise ValueError(f"{uri}: cannot decode image ({decoded.status}: {decoded.error})")
    return decoded.image


class LabeledImageDataset(torch_data.Dataset):
    """``torch`` Dataset of ``(image, label_map)`` pairs for the ``ok`` rows of a run.

    Args:
        run: an opened ``Run``.
        images: where the pixels come from: ``None`` reads each row's ``source_uri``; a directory
            (path or URI) reads ``<images>/<basename of source_uri>``; a callable gets the row.
        transform: optional ``f(image, label_map) -> anything`` applied per item.
        **filters: row filters as in ``Run.rows`` (``status`` is forced to ``"ok"``).
    Items: ``image`` (H, W, 3) uint8 RGB and ``label_map`` (H, W) int64 (255 = no segment), unless
    ``transform`` returns something else. An image whose size differs from the row's is an error.
    """

    def __init__(self, run: Run, images: ImageSource = None, transform: Optional[Callable] = None, **filters: Any):
        filters["status"] = "ok"
        self.rows = list(run.rows(**filters))
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        image = self._load(row)
        if image.shape[:2] != (row["height"], row["width"]):
            raise ValueError(f"{row['image_id']}: image is {image.shape[1]}x{image.shape[0]} but the labels "
                             f"are {row['width']}x{row['height']} (wrong image source?)")
        labels = label_map(row).astype(np.int64)
        return self.transform(image, labels) if self.transform else (image, labels)

    def _load(self, row: Dict[str, Any]) -> np.ndarray:
        if callable(self.images):
            return self.images(row)
        if self.images is None:
            return load_rgb(row["source_uri"])
        return load_rgb(self.images.rstrip("/") + "/" + row["source_uri"].rstrip("/").rsplit("/", 1)[-1])
