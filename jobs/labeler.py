"""Label a Ray Dataset you already have: ``Labeler``, a callable class for ``Dataset.map_batches``.

    import ray
    from jobs.labeler import Labeler, prepare_labeler

    spec = prepare_labeler(preset="voc21", weights="s3://models/ViT-B-16.pt")   # driver: model + text, once
    ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)
    labels = ds.map_batches(Labeler, fn_constructor_kwargs={"spec": spec, "scheme": "s3"},
                            concurrency=(1, 4), num_gpus=1, batch_size=16)
    labels.write_parquet(f"s3://bucket/labels/{spec.run_id}/")   # see docs/job.md on exactly-once

Every input row gives exactly one output row of ``schemas.LABEL_SCHEMA`` (and nothing else), with the CLI
job's decode and status rules: the same functions (``jobs.stages.decode_rows`` → ``SegmentStage.label_rows``),
so a bad image is a row with its status (``decode_error``, ``empty``, ``too_large``, ...), never an exception.

Input columns (names configurable in the constructor):

* ``bytes`` (binary): the encoded image, as ``ray.data.read_binary_files`` gives it. Decoded by
  ``pipeline.io.decode.decode_image`` exactly as the job decodes (EXIF orientation, pixel guard, statuses).
* ``image`` (uint8 (H, W[, C]) arrays), used only when there is no ``bytes`` column: pixels another reader
  decoded, as ``ray.data.read_images`` gives them (``decode_array``: no EXIF orientation, and ``read_images``
  raises on a corrupt file before the labeler sees it; prefer ``read_binary_files``).
* ``path`` (string): where the image came from, as ``include_paths=True`` gives it; becomes ``source_uri``.
  Ray drops the scheme of object-store paths (``bucket/key``): pass ``scheme="s3"`` to get ``s3://bucket/key``.
* an id column (``id_column=...``, optional): the row's ``image_id``; without it ``image_id`` is the job's
  ``jobs.inputs.stable_id(source_uri)``, so the same image gets the same id as in the CLI's runs.

Why a spec, prepared on the driver: the model is loaded and the text embeddings are computed once, by the job's
own steps (``jobs.runner.prepare_rows``: the same ``job_hash``, ``segmenter_hash`` and provenance columns
as the CLI). The embeddings are small ((Q, E) float32, e.g. 21 x 512 x 4 B = 43 KB) and travel *by value*
inside the spec: Ray Data keeps the ``fn_constructor_kwargs`` in one object it owns for the whole execution
and restarts a dead actor (``max_restarts=-1``) from it, so a restarted actor gets its embeddings again without
any reference of ours that could have been freed. Each actor builds the model from the spec's weights URI.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import pyarrow as pa

from jobs import cluster, storage
from jobs.config import LabelJobConfig, run_id_problem
from jobs.inputs import stable_id
from jobs.runner import prepare_rows
from jobs.stages import SegmentStage, decode_rows
from schemas import LABEL_SCHEMA

log = logging.getLogger("reslabel.job")
NOT_A_JOB_PATH = "<ray dataset>"  # input/output of the LabelJobConfig a spec is made from: never read


@dataclasses.dataclass(frozen=True)
class LabelerSpec:
    """What every ``Labeler`` actor needs, prepared once on the driver (``prepare_labeler``); picklable, small."""

    seg_config: Any  # pipeline.config.SegmenterConfig
    model_config: Any  # pipeline.config.ModelConfig (a JSON architecture inlined)
    vocabulary: Any  # pipeline.model.vocabulary.Vocabulary
    text: Any  # pipeline.model.text.TextEmbeddings, (Q, E) float32
    provenance: Dict[str, str]  # the row's provenance columns, job_hash and code_version included
    class_names: Tuple[str, ...]
    exclude_ids: Tuple[int, ...]  # category ids left out of segments (--background)
    row_spec: Dict[str, Any]  # instances, min_instance_area, ignore_below
    max_pixels: int
    images_per_call: int
    run_id: str  # the rows' run_id: name your write_parquet folder after it
    s3_endpoint: Optional[str] = None

    @property
    def job_hash(self) -> str:
        return self.provenance["job_hash"]


def new_run_id() -> str:
    """A run id in the CLI's format: UTC timestamp + 6 hex digits."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def prepare_labeler(config: Optional[LabelJobConfig] = None, *, run_id: Optional[str] = None,
                    **options: Any) -> LabelerSpec:
    """Validate the options, load the model and compute (or read from ``text_cache``) the text embeddings once,
    in the job's prepare task; returns the ``LabelerSpec`` to hand to ``Labeler`` (``fn_constructor_kwargs``).

    ``config`` (a ``LabelJobConfig``, e.g. from ``jobs.label.config_from_args``) or ``options`` (its field names:
    ``preset``, ``model``, ``weights``, ``vocabulary``, ``templates``, ``overrides``, ``dtype``, ``device``,
    ``background``, ``max_pixels``, ``instances``, ``min_instance_area``, ``ignore_below``, ``images_per_call``,
    ``text_cache``, ``s3_endpoint``, ``shared_fs``; ``cpus_per_actor``/``gpus_per_actor`` size the prepare task).
    The job's input/output, pool and shard options do not apply. ``run_id``: the rows' ``run_id`` (default: a
    new id in the CLI's format). Connects to Ray (``ray.init()``) when it is not initialised. Raises the CLI's
    errors (``ConfigError``, ``WeightsError``) before any work."""
    import ray

    from pipeline.model.clip import check_weights, inline_arch
    from pipeline.model.vocabulary import Vocabulary

    if config is None:
        config = LabelJobConfig(input=NOT_A_JOB_PATH, output=NOT_A_JOB_PATH, **options)
    elif options:
        config = dataclasses.replace(config, **options)
    cfg = config.validate().with_absolute_paths()
    problem = None if run_id is None else run_id_problem(run_id)
    if problem:
        raise ValueError(problem)
    storage.apply_endpoint(cfg.s3_endpoint)
    if not ray.is_initialized():
        ray.init()
    paths = [(name, getattr(cfg, name)) for name in ("weights", "text_cache")]
    cluster.check_local(paths, cluster.Placement.of_running_ray(), cfg.shared_fs)
    if cfg.weights:
        check_weights(cfg.weights)
    seg_cfg = cfg.segmenter_config()
    vocab = Vocabulary.load(seg_cfg.vocabulary, seg_cfg.templates)
    mc = inline_arch(cfg.model_config())
    prep = prepare_rows(cfg, seg_cfg, mc, vocab)
    return LabelerSpec(seg_config=seg_cfg, model_config=mc, vocabulary=vocab, text=prep["text"],
                       provenance=dict(prep["provenance"]), class_names=tuple(prep["class_names"]),
                       exclude_ids=tuple(prep["exclude"]),
                       row_spec=dict(instances=cfg.instances, min_instance_area=cfg.min_instance_area,
                                     ignore_below=cfg.ignore_below),
                       max_pixels=cfg.max_pixels, images_per_call=cfg.images_per_call,
                       run_id=run_id or new_run_id(), s3_endpoint=cfg.s3_endpoint)


Batch = Union[pa.Table, Mapping[str, Any]]


class Labeler:
    """``ds.map_batches(Labeler, fn_constructor_kwargs={"spec": spec, ...}, concurrency=(min, max), ...)``:
    batches of images (see the module docstring for the columns) → one ``LABEL_SCHEMA`` row per input row, as a
    ``pyarrow.Table``. The segmenter is built once per actor (``jobs.stages.SegmentStage`` without its part
    writer); ``torch_threads`` defaults to the CPUs Ray assigned to the actor (at least 1)."""

    def __init__(self, spec: LabelerSpec, *, bytes_column: str = "bytes", image_column: str = "image",
                 path_column: str = "path", id_column: Optional[str] = None, scheme: Optional[str] = None,
                 torch_threads: Optional[int] = None):
        if not isinstance(spec, LabelerSpec):
            raise TypeError(f"spec must be the LabelerSpec that prepare_labeler() returns, not {type(spec).__name__}")
        self.spec = spec
        self.bytes_column, self.image_column, self.path_column = bytes_column, image_column, path_column
        self.id_column = id_column
        self.prefix = f"{scheme}://" if scheme else ""
        self.stage = SegmentStage(
            seg_config=spec.seg_config, model_config=spec.model_config, vocabulary=spec.vocabulary,
            text_embeddings=spec.text, provenance=spec.provenance, run_id=spec.run_id, exclude_ids=spec.exclude_ids,
            torch_threads=torch_threads or _assigned_cpus(), images_per_call=spec.images_per_call, run=None,
            part_metadata={}, s3_endpoint=spec.s3_endpoint, row_spec=spec.row_spec)

    def __call__(self, batch: Batch) -> pa.Table:
        columns = _columns(batch)
        n = len(next(iter(columns.values()))) if columns else 0
        data_column = self.bytes_column if self.bytes_column in columns else self.image_column
        if data_column not in columns:
            raise ValueError(f"Labeler: the batch has no {self.bytes_column!r} (encoded images, read_binary_files) "
                             f"or {self.image_column!r} (decoded arrays, read_images) column; it has "
                             f"{sorted(columns)}")
        if self.path_column not in columns and self.id_column not in columns:
            raise ValueError(f"Labeler: the batch has no {self.path_column!r} column (read_binary_files(..., "
                             f"include_paths=True)) and no id column (id_column={self.id_column!r}); it has "
                             f"{sorted(columns)}")
        uris = [self._uri(p) for p in columns[self.path_column]] if self.path_column in columns else None
        ids = [str(v) for v in columns[self.id_column]] if self.id_column in columns else [stable_id(u) for u in uris]
        uris = uris if uris is not None else ids
        rows = [dict(image_id=i, source_uri=u, pre_status=None, pre_error=None, _shard=0) for i, u in zip(ids, uris)]
        fetched = [(_data(v), None, None) for v in columns[data_column]]
        decoded = decode_rows(rows, fetched, seg_config=self.spec.seg_config, max_pixels=self.spec.max_pixels)
        decoded = decoded.set_column(decoded.schema.get_field_index("_shard_rows"), "_shard_rows",
                                     pa.array([n] * n, pa.int32()))
        return self.stage.label_rows(decoded).select(LABEL_SCHEMA.names)

    def _uri(self, path: Any) -> str:
        path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
        return path if "://" in path or not self.prefix else self.prefix + path


def _assigned_cpus() -> int:
    """Whole CPUs Ray assigned to this actor (at least 1): its torch thread count on CPU."""
    import ray

    try:
        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except Exception:  # noqa: BLE001 - outside Ray (a direct call): one thread
        return 1


def _columns(batch: Batch) -> Dict[str, List[Any]]:
    """A batch (Ray Data's default dict of numpy arrays, a pyarrow Table or pandas) → column name → values
    (Ray's tensor columns, e.g. ``read_images``' ``image``, → one numpy array per row)."""
    if not isinstance(batch, Mapping):
        from ray.data.block import BlockAccessor

        batch = BlockAccessor.for_block(batch).to_batch_format("numpy")
    return {str(name): list(values) for name, values in batch.items()}


def _data(value: Any) -> Any:
    """An input cell → encoded bytes, a uint8 array, or None (a missing value: an ``empty`` row)."""
    if value is None or isinstance(value, (bytes, np.ndarray)):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return np.asarray(value)
