"""The two stages of the labeling job, one shard from end to end (``jobs.dispatch`` hands the shards out):

    read_shard    (CPU task)    a shard number → the shard's plan rows → fetch (threads) → decode → resize
    SegmentStage  (actor pool)  a shard's decoded images → label rows (``images_per_call`` images per segmenter
                                call) → ``write_parts``: ``part-<shard>.parquet``, written by the actor; returns one
                                small stats row per part (the driver never sees a label row)

The actor gets all rows of a shard in one call and checks them before writing. Every input reaches the writer as
exactly one row: failures are rows with a status, never exceptions. Private columns (``_shard``, ``_shard_rows``,
``_t_*`` stage seconds) ride along and are stripped by the writer.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs import commit, storage
from schemas import Status, layout, make_row, rows_to_table

DECODED_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("source_uri", pa.string()), ("_shard", pa.int32()), ("_shard_rows", pa.int32()),
    ("status", pa.string()), ("error", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("pixels", pa.large_binary()),  # RGB uint8, row-major (ph, pw, 3); null unless ok
    ("ph", pa.int32()), ("pw", pa.int32()),  # the shipped pixels: resized, or decoded when resizing would enlarge
    ("rh", pa.int32()), ("rw", pa.int32()),  # the size the preset resizes to (the actor resizes if they differ)
    ("_t_read", pa.float64()), ("_t_decode", pa.float64()),
])
TIMING_COLUMNS = ("_t_read", "_t_decode", "_t_segment", "_t_encode")
# --images-per-call when not given, per device type: a GPU needs many crops per forward (crops_per_forward is
# sized per device as well, pipeline.config.DEVICE_CROPS_PER_FORWARD), a CPU actor gains nothing from more.
IMAGES_PER_CALL = {"cpu": 4, "cuda": 16}
log = logging.getLogger(__name__)


def read_shard(shard: int, *, plan, seg_config, bytes_column: str, max_pixels: int, threads: int,
               s3_endpoint: Optional[str] = None) -> pa.Table:
    """A shard number → every image of that shard, decoded and resized (``DECODED_SCHEMA``). ``plan`` is a
    ``jobs.planner.PlanLocator``."""
    storage.apply_endpoint(s3_endpoint)
    rows = plan.read(shard)
    rows = rows.append_column("_shard", pa.array([shard] * rows.num_rows, pa.int32()))
    decoded = read_decode(rows, seg_config=seg_config, bytes_column=bytes_column, max_pixels=max_pixels,
                          threads=threads)
    return decoded.set_column(decoded.schema.get_field_index("_shard_rows"), "_shard_rows",
                              pa.array([rows.num_rows] * rows.num_rows, pa.int32()))


def read_decode(batch: pa.Table, *, seg_config, bytes_column: str, max_pixels: int, threads: int = 1,
                s3_endpoint: Optional[str] = None) -> pa.Table:
    """Index rows (``jobs.inputs.INDEX_SCHEMA`` + ``_shard``) → decoded, resized images (``DECODED_SCHEMA``;
    ``_shard_rows`` left null). Objects are fetched ``threads`` at a time."""
    from jobs.containers import fetch_bytes

    storage.apply_endpoint(s3_endpoint)
    rows = batch.to_pylist()
    t0 = time.perf_counter()
    todo = [r for r in rows if not r["pre_status"]]
    fetched = dict(zip((r["image_id"] for r in todo), fetch_bytes(todo, bytes_column, threads)))
    t_read = (time.perf_counter() - t0) / max(len(rows), 1)
    return decode_rows(rows, [fetched.get(r["image_id"]) for r in rows], seg_config=seg_config,
                       max_pixels=max_pixels, t_read=t_read)


def decode_rows(rows: Sequence[Dict], fetched: Sequence[Optional[tuple]], *, seg_config, max_pixels: int,
                t_read: float = 0.0) -> pa.Table:
    """Index rows (``image_id``, ``source_uri``, ``pre_status``, ``pre_error``, ``_shard``) and, per row, what
    was fetched for it (``(data, read_status, read_error)``; None for a ``pre_status`` row) → decoded, resized
    images (``DECODED_SCHEMA``; ``_shard_rows`` left null). ``data`` is encoded bytes (``decode_image``) or an
    already decoded (H, W[, C]) uint8 array (``decode_array``). ``t_read``: seconds per row spent fetching.
    The one decode step of the job's read tasks and of ``jobs.labeler.Labeler``."""
    out, images = [], []
    for r, f in zip(rows, fetched):
        t1 = time.perf_counter()
        rec = _decode_one(r, f, seg_config, max_pixels)
        images.append(rec.pop("image", None))
        rec.update(image_id=r["image_id"], source_uri=r["source_uri"], _shard=r["_shard"], _t_read=t_read,
                   _t_decode=time.perf_counter() - t1)
        out.append(rec)
    columns = {f.name: pa.array([rec.get(f.name) for rec in out], f.type) for f in DECODED_SCHEMA if f.name != "pixels"}
    columns["pixels"] = pixel_column(images)
    return pa.table([columns[f.name] for f in DECODED_SCHEMA], schema=DECODED_SCHEMA)


def pixel_column(images: Sequence[Optional[np.ndarray]]) -> pa.Array:
    """uint8 images (or None) → a ``large_binary`` array of their row-major bytes, null where None, built with one
    copy into a single buffer (``pa.array`` of Python bytes ran at ~230 MB/s here: 0.4 s for a shard)."""
    sizes = np.array([0 if im is None else im.size for im in images], dtype=np.int64)
    offsets = np.zeros(len(images) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    for im, start, size in zip(images, offsets[:-1], sizes):
        if im is not None:
            data[start:start + size] = im.reshape(-1)
    valid = pa.array([im is not None for im in images], pa.bool_())
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(images),
                                            [valid.buffers()[1], pa.py_buffer(offsets), pa.py_buffer(data)])


def write_parts(batch: pa.Table, *, run: str, metadata: Dict[str, str]) -> List[Dict]:
    """Label rows of whole shards → one part per shard, written here (no-clobber: a retried call, or a shard an
    earlier attempt committed, keeps the existing part). Returns per part ``{shard, name, rows, written, stats}``
    (``stats``: the ``commit.part_stats`` JSON)."""
    results = []
    for shard in sorted(set(batch.column("_shard").to_pylist())):
        rows = batch.filter(pc.equal(batch.column("_shard"), shard))
        expected = rows.column("_shard_rows")[0].as_py()
        if rows.num_rows != expected or len(set(rows.column("image_id").to_pylist())) != rows.num_rows:
            raise RuntimeError(f"shard {shard}: {rows.num_rows} rows in this call for {expected} planned images")
        stages = {c[3:]: float(pc.sum(rows.column(c)).as_py() or 0.0) for c in TIMING_COLUMNS}
        stats = commit.part_stats(rows, stages)
        meta = {**metadata, layout.META_SHARD: str(shard), layout.META_PART_STATS: json.dumps(stats)}
        written = commit.write_part(run, shard, commit.part_table([rows], meta))
        if not written:  # an earlier call committed this shard: report what the committed part holds
            (kept,) = commit.read_part_stats(run, [shard])
            stats = {k: kept[k] for k in ("by_status", "stage_seconds", "errors", "pixels")}
        results.append(dict(shard=shard, name=layout.part_name(shard), rows=rows.num_rows, written=written,
                            stats=json.dumps(stats)))
    return results


def _decode_one(r: Dict, fetched, seg_config, max_pixels: int) -> Dict:
    from pipeline.io.decode import decode_array, decode_image
    from pipeline.method.preprocess import ImageError, rescale_size, resize_for_config

    if r["pre_status"]:
        return dict(status=r["pre_status"], error=r["pre_error"])
    data, read_status, read_error = fetched
    if read_error is not None:
        return dict(status=read_status, error=read_error)
    d = decode_array(data, max_pixels) if isinstance(data, np.ndarray) else decode_image(data, max_pixels=max_pixels)
    base = dict(status=d.status, error=d.error, width=d.width, height=d.height)
    if d.status != Status.OK.value:
        return base
    rh, rw = rescale_size(d.height, d.width, seg_config.resize_short, seg_config.resize_long)
    if max(rh, rw) > seg_config.max_side_after_resize:
        return dict(base, status=Status.TOO_LARGE.value,
                    error=f"resizes to {rh}x{rw}, above max_side_after_resize={seg_config.max_side_after_resize}")
    if rh * rw > d.height * d.width:  # enlarging: ship the smaller decoded image, the actor resizes it
        return dict(base, image=d.image, ph=d.height, pw=d.width, rh=rh, rw=rw)
    try:
        img = resize_for_config(d.image, seg_config, r["source_uri"])
    except ImageError as e:  # e.g. an extreme aspect ratio resizes to an empty side
        return dict(base, status=Status.TOO_SMALL.value, error=str(e))
    return dict(base, image=img, ph=img.shape[0], pw=img.shape[1], rh=img.shape[0], rw=img.shape[1])


def _read_text(uri: str):
    """The ``TextEmbeddings`` cached at ``uri``, or None when the file is not there (yet)."""
    from pipeline.model.text import TextEmbeddings

    try:
        return TextEmbeddings.load(uri)
    except FileNotFoundError:
        return None


class SegmentStage:
    """Segment actor: builds the ``Segmenter`` once (the vocabulary read by the driver, the text embeddings loaded
    from the text cache the driver wrote), then turns decoded batches into label rows (``schemas.LABEL_SCHEMA`` +
    private columns).

    Its constructor arguments are small values, never object-store references: Ray keeps an actor's creation
    arguments for its restarts only while they are in scope (a ref argument, or arguments over 100 KiB that Ray
    puts in the object store, log an error-level warning with ``max_restarts > 0``). ``text_embeddings`` is the
    URI of the cached ``TextEmbeddings`` file (``pipeline.model.text.cache_target``), read again by every restart.
    """

    def __init__(self, seg_config, model_config, vocabulary, text_embeddings: Any, provenance: Dict[str, str],
                 run_id: Optional[str], exclude_ids: Sequence[int], torch_threads: int, images_per_call: int,
                 run: Optional[str] = None, part_metadata: Optional[Dict[str, str]] = None,
                 s3_endpoint: Optional[str] = None, row_spec: Optional[Dict[str, Any]] = None):
        import ray
        import torch

        from jobs import devices  # the device rule: auto = the GPUs Ray assigned, else the CPU
        from pipeline.model.clip import build_model, vision_parts
        from pipeline.prepare import provenance as provenance_of

        storage.apply_endpoint(s3_endpoint)
        gpu_ids = ray.get_gpu_ids()
        model_config = dataclasses.replace(model_config, device=devices.worker_device(model_config.device, gpu_ids))
        if model_config.device == "cpu":
            torch.set_num_threads(max(1, int(torch_threads)))  # Ray sets OMP_NUM_THREADS=1 in workers
        self.text_uri: Optional[str] = None
        te = text_embeddings
        if isinstance(te, str):  # the text cache's file (the job's way: survives restarts, no object store)
            self.text_uri, te = te, _read_text(te)  # None while the prepare task computes it (see _segmenter)
        elif isinstance(te, ray.ObjectRef):
            te = ray.get(te)
        seg_config.validate()
        model_config.validate()
        net, digest = build_model(model_config)
        self._parts = (seg_config, model_config, net, digest, vocabulary)
        self._seg = None
        if te is not None:
            self._attach(te)
        device = next(net.parameters()).device
        self.device = devices.describe(device, gpu_ids).to_dict()
        self.device["actor"] = ray.get_runtime_context().get_actor_id()
        own = provenance_of(seg_config, model_config, digest, vocabulary)
        for k in ("weights_digest", "vocabulary_hash", "method", "base", "preset"):
            if own[k] != provenance[k]:
                raise RuntimeError(f"actor built a different segmenter than planned: "
                                   f"{k} {own[k]!r} != {provenance[k]!r}")
        self.provenance = {k: provenance[k] for k in ("method", "base", "preset", "model", "weights_digest",
                                                       "vocabulary_hash", "segmenter_hash", "job_hash", "code_version")}
        self.run_id = run_id
        self.exclude = set(exclude_ids)
        self.patch = tuple(vision_parts(net).patch_size)
        # None = the device's default
        self.images_per_call = int(images_per_call or IMAGES_PER_CALL.get(device.type, 4))
        self.run, self.part_metadata = run, dict(part_metadata or {})
        self.row_spec = dict(row_spec or {})  # instances, min_instance_area, ignore_below (LabelJobConfig)
        self.confidence = bool(self.row_spec.get("instances")) or self.row_spec.get("ignore_below") is not None

    def _attach(self, te) -> None:
        from pipeline.segmenter import Segmenter

        seg_config, model_config, net, digest, vocabulary = self._parts
        if not te.matches(vocabulary):
            raise RuntimeError(f"text embeddings {self.text_uri or ''} were computed for another vocabulary")
        self._seg = Segmenter(seg_config, model_config, net, digest, vocabulary, te)

    @property
    def seg(self):
        """The ``Segmenter``. An actor started beside the prepare task (while the driver plans) has built its
        model but not read the text embeddings yet: it reads them from the text cache at its first call, which
        the driver makes only after writing them."""
        if self._seg is None:
            te = _read_text(self.text_uri) if self.text_uri else None
            if te is None:
                raise RuntimeError(f"text embeddings {self.text_uri} are not in the text cache")
            self._attach(te)
        return self._seg

    def ready(self) -> bool:
        """Answers once the actor is up (the driver's probe after a restart)."""
        return True

    def label_block(self, block: pa.Table, context: Optional[Dict[str, Any]] = None) -> List[Dict]:
        """Decoded images of whole shards (``read_shard``) → their parts, written here → ``write_parts`` results.
        ``context`` (``run``, ``run_id``, ``part_metadata``) names the run when the actor was started before the
        run was registered (``jobs.runner``: actors start while the driver plans)."""
        if context:
            self.run, self.run_id = context["run"], context["run_id"]
            self.part_metadata = dict(context["part_metadata"])
        written = write_parts(self.label_rows(block), run=self.run, metadata=self.part_metadata)
        return [dict(r, device=getattr(self, "device", None)) for r in written]  # the summary's actor devices

    def label_rows(self, block: pa.Table) -> pa.Table:
        """Decoded images (``DECODED_SCHEMA``) → one label row each (``LABEL_SCHEMA`` + the private columns), in
        segmenter calls of ``images_per_call`` images; nothing is written (``jobs.labeler.Labeler`` uses it)."""
        n, k = block.num_rows, self.images_per_call
        return pa.concat_tables([self._label(block.slice(i, k)) for i in range(0, n, k)]) if n else self._label(block)

    def _label(self, batch: pa.Table) -> pa.Table:
        recs = batch.to_pylist()
        t0 = time.perf_counter()
        results = self._segment(recs)
        t_seg = (time.perf_counter() - t0) / max(len(recs), 1)
        rows, t_enc = [], []
        now = datetime.datetime.now(datetime.timezone.utc)
        for rec, res in zip(recs, results):
            t1 = time.perf_counter()
            rows.append(self._row(rec, res, now))
            t_enc.append(time.perf_counter() - t1)
        table = rows_to_table(rows)
        extra = {"_shard": batch.column("_shard"), "_shard_rows": batch.column("_shard_rows"),
                 "_t_read": batch.column("_t_read"),
                 "_t_decode": batch.column("_t_decode"), "_t_segment": pa.array([t_seg] * len(rows), pa.float64()),
                 "_t_encode": pa.array(t_enc, pa.float64())}
        for name, col in extra.items():
            table = table.append_column(name, col)
        return table

    def _segment(self, recs: List[Dict]) -> List:
        """Per record: a SegmentationResult, an (status, message) tuple, or None (not an ok input)."""
        out: List = [None] * len(recs)
        idx = []
        for i, r in enumerate(recs):
            if r["status"] != Status.OK.value:
                continue
            if r["rh"] < self.patch[0] or r["rw"] < self.patch[1]:
                out[i] = (Status.TOO_SMALL.value,
                          f"resized to {r['rh']}x{r['rw']}, smaller than one {self.patch} patch")
            else:
                idx.append(i)
        images = [self._pixels(recs[i]) for i in idx]
        sizes = [(recs[i]["height"], recs[i]["width"]) for i in idx]
        for i, res in zip(idx, self._segment_batch(images, sizes)):
            out[i] = res
        return out

    def _segment_batch(self, images: List[np.ndarray], sizes: List) -> List:
        """Images → a SegmentationResult or an (inference_error, message) tuple each.

        CUDA out of memory: empty the cache, halve the batch and retry, down to one image; an image that fails alone
        (out of memory or any ordinary error) becomes ``inference_error``. A sticky CUDA error (the context is
        poisoned: every later call would fail) ends the actor's process: Ray restarts it and the dispatcher
        requeues its shards (nothing of this call was written). Any other error: the images are retried one by one
        and each failing one becomes ``inference_error``."""
        from jobs import devices

        if not images:
            return []
        try:
            fault = devices.injected_fault(len(images))
            if fault is not None:
                raise fault
            return list(self.seg.segment_prepared(images, sizes, return_confidence=self.confidence))
        except Exception as e:  # noqa: BLE001 - classified below
            kind = devices.fault_kind(e)
            if kind == "sticky":
                self._exit_sticky(e)
            if kind == "oom":
                self._empty_cache()
                if len(images) > 1:
                    half = (len(images) + 1) // 2
                    log.warning("CUDA out of memory on %d images; retrying as %d + %d", len(images), half,
                                len(images) - half)
                    return self._segment_batch(images[:half], sizes[:half]) + \
                        self._segment_batch(images[half:], sizes[half:])
                return [(Status.INFERENCE_ERROR.value, f"{type(e).__name__}: {e}"[:2000])]
            if len(images) == 1:
                return [(Status.INFERENCE_ERROR.value, f"{type(e).__name__}: {e}"[:2000])]
            return [r for img, hw in zip(images, sizes) for r in self._segment_batch([img], [hw])]

    def _empty_cache(self) -> None:
        import torch

        if self.seg.device.type == "cuda":
            torch.cuda.empty_cache()

    def _exit_sticky(self, e: BaseException) -> None:
        """A sticky CUDA error: log it and end this process now (``os._exit``: no cleanup touches the poisoned
        context); Ray restarts the actor, the driver requeues its shards."""
        import sys

        print(f"segment actor on {self.device}: sticky CUDA error, exiting so that Ray restarts it: "
              f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(70)

    def _pixels(self, rec: Dict) -> np.ndarray:
        """A record's image at the preset's size: the shipped pixels, resized here when the read task sent the
        (smaller) decoded image; the same ``resize_for_config`` either way."""
        from pipeline.method.preprocess import resize_for_config

        img = np.frombuffer(rec["pixels"], np.uint8).reshape(rec["ph"], rec["pw"], 3)
        if (rec["ph"], rec["pw"]) != (rec["rh"], rec["rw"]):
            img = resize_for_config(img, self.seg.config, rec["source_uri"])
        return img

    def _row(self, rec: Dict, res, now: datetime.datetime) -> Dict:
        from pipeline.labels.segments import image_confidence, row_segments

        common = dict(image_id=rec["image_id"], source_uri=rec["source_uri"], width=rec["width"],
                      height=rec["height"], run_id=self.run_id, labeled_at=now, **self.provenance)
        if res is None:
            return make_row(status=rec["status"], error=rec["error"], **common)
        if isinstance(res, tuple):
            return make_row(status=res[0], error=res[1], **common)
        segs, ignore = row_segments(res.labels, self.seg.class_names, res.class_scores, self.exclude,
                                    label_probs=res.label_probs, confidence=res.confidence, **self.row_spec)
        return make_row(status=Status.OK.value, segments=segs, ignore=ignore,
                        confidence=image_confidence(res.class_scores, res.pixel_counts), **common)  # schema 2.2
