"""Stream a labeling run into training: ``read_labels(run) -> ray.data.Dataset`` of decoded label maps.

    ds = read_labels("s3://bucket/out/runs/<run_id>", size=(512, 512), with_images=True, metadata=False)
    for batch in ds.iter_torch_batches(batch_size=16):
        batch["image"]   # (16, 512, 512, 3) uint8, decoded exactly as the job decoded it
        batch["label"]   # (16, 512, 512) uint8 class index (int32 past 254 classes); 255 = no segment or ignored

The committed parts (``_SUCCESS.json``'s list) are read by Ray Data's Parquet reader in tasks, a block at a
time: the run is never materialised in the driver or in one worker. Each row's segments are decoded there
(``pipeline.labels.reader.label_map``; ignore regions are 255). Without ``size`` every row keeps its own
shape (iterate rows, or batches with a ``collate_fn``); with ``size`` labels are resized by nearest neighbour
and images bilinearly, so batches stack.

The dataset returned is a ``LabelsDataset``: a ``ray.data.Dataset`` whose ``iter_torch_batches()`` works with
its defaults: the string columns (``image_id``, ``source_uri``, ``status``) come back as lists of ``str``
beside the tensors (``LabelCollate``), and a batch of rows of different sizes raises an error that names
``size=``. ``materialize()`` keeps that (decode once, iterate many epochs from the object store).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import ray.data
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.dataset import MaterializedDataset

from jobs import storage
from pipeline.labels.reader import UNLABELED, label_map, open_run

ROW_COLUMNS = ("image_id", "source_uri", "width", "height", "status")
STRING_COLUMNS = ("image_id", "source_uri", "status")
READ_COLUMNS = ROW_COLUMNS + ("segments", "ignore")


def _decode_rows(row: Dict[str, Any], *, statuses: Sequence[str], fill: int, size: Optional[Tuple[int, int]],
                 with_images: bool, s3_endpoint: Optional[str], dtype: str, metadata: bool) -> List[Dict[str, Any]]:
    """One Parquet row → [] (another status) or [a training row]: the row's fields, ``label`` (H, W) ``dtype``
    and, on request, ``image`` (H, W, 3) uint8 (both resized to ``size`` = (H, W) when given)."""
    if row["status"] not in statuses:
        return []
    out = {k: row[k] for k in (ROW_COLUMNS if metadata else ("width", "height"))}
    ok = row["status"] == "ok" and row["height"] is not None
    labels = label_map(row, fill) if ok else np.full((1, 1), UNLABELED, np.int32)
    out["label"] = (nearest(labels, size) if size is not None else labels).astype(dtype)
    if with_images:
        import cv2

        from pipeline.labels.dataset import load_rgb

        storage.apply_endpoint(s3_endpoint)
        image = load_rgb(row["source_uri"]) if ok else np.zeros((1, 1, 3), np.uint8)
        if size is not None and tuple(image.shape[:2]) != tuple(size):
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out["image"] = image
    return [out]


def nearest(labels: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(H, W) → ``size`` = (h, w) by nearest neighbour (pixel centres; no invented classes)."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


class LabelCollate(NumpyBatchCollateFn):
    """The default ``collate_fn`` of ``LabelsDataset.iter_torch_batches``: numeric columns → tensors (on
    ``device``), string columns → ``list`` of ``str``. A batch whose ``label``/``image`` arrays differ in size
    (a run read without ``size=``) raises ``ValueError`` naming ``size=`` instead of Ray's dtype error."""

    def __init__(self, device: Any = None):
        super().__init__()
        self.device = device

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
        import torch

        out: Dict[str, Any] = {}
        for name, column in batch.items():
            if name not in ("label", "image") and (column.dtype.kind in "US" or column.dtype == object):
                out[name] = [v if v is None else (str(v) if column.dtype.kind in "US" else v) for v in column]
                continue  # strings (and, for failed rows, null sizes) stay Python values
            if column.dtype == object:  # ragged tensor column: rows of different (H, W)
                shapes = sorted({tuple(np.shape(v)) for v in column})
                raise ValueError(
                    f"read_labels: the {name!r} arrays of this batch have different shapes {shapes[:4]}: pass "
                    "size=(H, W) to read_labels so that they are resized and stack, or iterate rows "
                    "(iter_rows) / give iter_torch_batches a collate_fn")
            tensor = torch.from_numpy(np.array(column))  # a writable copy
            out[name] = tensor if self.device is None else tensor.to(self.device)
        return out


def _auto_device() -> Any:
    """``device="auto"`` as Ray resolves it: the Ray Train worker's device, else the CPU."""
    import torch

    try:
        from ray.train.torch import get_device
        from ray.train.utils import _in_ray_train_worker  # Ray's own rule for "auto"

        if _in_ray_train_worker():
            return get_device()
    except ImportError:  # pragma: no cover - ray[train] is part of ray here
        pass
    return torch.device("cpu")


class LabelsDataset(ray.data.Dataset):
    """The ``ray.data.Dataset`` of ``read_labels``: ``iter_torch_batches()`` uses ``LabelCollate`` unless given
    a ``collate_fn`` or ``dtypes``, and ``materialize()`` returns a dataset that still does (a materialized
    run is decoded once; later epochs read the decoded blocks from the object store)."""

    def iter_torch_batches(self, *, collate_fn: Any = None, dtypes: Any = None, device: Any = "auto",
                           **kwargs: Any) -> Iterator[Dict[str, Any]]:
        if collate_fn is not None or dtypes is not None:
            return super().iter_torch_batches(collate_fn=collate_fn, dtypes=dtypes, device=device, **kwargs)
        import torch

        target = _auto_device() if device == "auto" else torch.device(device)
        # tensors are moved in the collate (Ray moves only all-tensor batches; it then finds them there)
        return super().iter_torch_batches(collate_fn=LabelCollate(target), device=target, **kwargs)

    def materialize(self) -> "MaterializedLabelsDataset":
        return ray.data.Dataset.copy(super().materialize(), _as=MaterializedLabelsDataset)


class MaterializedLabelsDataset(LabelsDataset, MaterializedDataset):
    """A materialized ``LabelsDataset`` (``read_labels(...).materialize()``): decoded rows pinned in the object
    store, iterated again without re-reading the Parquet or the images."""


def quiet_ray_data() -> None:
    """Silence Ray Data's per-execution INFO lines and progress bars in this process (``read_labels`` does
    this unless ``verbose=True``); warnings and errors still print."""
    from ray.util.debug import log_once

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    log_once("ray_data_progress_manager_disabled")  # Ray's own "progress bars disabled" notice: asked for


def read_labels(run: str, *, status: Iterable[str] = ("ok",), with_images: bool = False,
                size: Optional[Tuple[int, int]] = None, fill: Optional[int] = None, allow_partial: bool = False,
                s3_endpoint: Optional[str] = None, metadata: bool = True, shared_fs: bool = False,
                override_num_blocks: Optional[int] = None, verbose: bool = False) -> "LabelsDataset":
    """A ``ray.data.Dataset`` streaming the rows of ``run`` (local path or s3:// URI of ``OUTPUT/runs/<id>``).

    Args:
        status: the row statuses to keep (failed rows get a 1x1 label of 255 and, with images, a black 1x1
            image; resized to ``size`` when given).
        with_images: also read and decode each row's ``source_uri`` (``image``, (H, W, 3) uint8).
        size: (H, W) pixels: resize labels (nearest) and images (bilinear) so that batches stack.
        fill: label of pixels no segment covers (default 255; ``run.background_fill()`` restores the dropped
            background class). Ignore regions (``--ignore-below``) stay 255 whatever ``fill`` says.
        allow_partial: read a run without ``_SUCCESS.json`` (the parts written so far).
        s3_endpoint: S3-compatible endpoint for the image reads in tasks (else ``AWS_ENDPOINT_URL``).
        metadata: keep the string columns (``image_id``, ``source_uri``, ``status``); the default
            ``iter_torch_batches()`` returns them as lists of ``str`` beside the tensors. ``False`` leaves only
            numbers (``label``, ``image``, ``width``, ``height``), e.g. for a ``collate_fn`` of your own.
        shared_fs: a local ``run`` path is mounted at the same path on every node; without it a local path
            is refused on a multi-node cluster (the read tasks run on any node), as the labeling job does.
        verbose: keep Ray Data's INFO lines and progress bars (default: only warnings and errors).
    Returns a ``LabelsDataset`` (a ``ray.data.Dataset``; ``.materialize()`` caches the decoded rows).
    Raises ``RunNotCommitted`` / ``FileNotFoundError`` (from ``open_run``) before any task starts,
    ``ValueError`` for a bad ``size`` or ``fill``, and ``ConfigError`` for a local ``run`` path on a
    multi-node cluster without ``shared_fs``.
    """
    import functools

    import pyarrow.fs as pafs
    import ray

    if size is not None and (len(size) != 2 or min(int(s) for s in size) <= 0):
        raise ValueError(f"size={size!r}: expected (height, width) in pixels, both > 0")
    if fill is not None and not 0 <= int(fill) <= 255:
        raise ValueError(f"fill={fill!r}: a label value must fit uint8 (0-255)")
    if ray.is_initialized():
        from jobs import cluster

        cluster.check_local([("run", run)], cluster.Placement.of_running_ray(), shared_fs)
    if not verbose:
        quiet_ray_data()
    storage.apply_endpoint(s3_endpoint)
    # the filesystem is pickled into Ray's read tasks: it carries the endpoint, not this process's environment
    options = {"endpoint_url": s3_endpoint} if s3_endpoint and run.startswith("s3://") else None
    opened = open_run(run, allow_partial=allow_partial, storage_options=options)
    if not opened.files:
        return ray.data.Dataset.copy(ray.data.from_items([]), _as=LabelsDataset)
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(opened.fs))
    # parts of older schemas lack `ignore` (2.0) or hold `config_hash` (1.x, not read): the reader fills null
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:  # Ray 2.60's V2 reader lists files in a thread pool that prints an InterruptedError at teardown
        ds = ray.data.read_parquet(opened.files, filesystem=fs, columns=list(READ_COLUMNS),
                                   override_num_blocks=override_num_blocks)
    finally:
        ctx.use_datasource_v2 = v2
    dtype = "uint8" if len(opened.categories) < UNLABELED else "int32"  # 255 stays free for "no label"
    decode = functools.partial(_decode_rows, statuses=tuple(status), fill=UNLABELED if fill is None else int(fill),
                               size=None if size is None else (int(size[0]), int(size[1])),
                               with_images=with_images, s3_endpoint=s3_endpoint, dtype=dtype, metadata=metadata)
    return ray.data.Dataset.copy(ds.flat_map(decode), _as=LabelsDataset)
