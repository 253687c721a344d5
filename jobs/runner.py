"""Orchestration of one labeling job: validate → list inputs → prepare (text once) → plan → label → commit.

``run_job(config)`` is the Python API behind ``python -m jobs.label``; it reuses a Ray already
initialised by the caller, else connects to ``$RAY_ADDRESS``/``ray_address`` or starts a local Ray.
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import json
import logging
import os
import time
import uuid
from typing import Dict, List, Optional

import pyarrow as pa
import pyarrow.compute as pc

from jobs import cluster, commit, storage
from jobs.config import RETRY_POLICIES, LabelJobConfig
from jobs.inputs import InputOptions, build_index
from jobs.stages import TIMING_COLUMNS, SegmentStage, read_decode
from schemas.version import code_version

log = logging.getLogger("reslabel.job")
DECODE_BASE_BYTES = 160 * 2**20  # peak USS of a read+decode task on 16 VGA or HD images: 132-163 MiB measured
DECODE_BYTES_PER_PIXEL = 16  # measured 15-16 bytes per decoded pixel (bytes, Pillow's RGB, numpy copy, resize)
MAX_INPUT_BLOCKS = 4096  # the plan is split into at most this many input blocks


def decode_memory(max_pixels: int) -> int:
    """Bytes a read+decode task reserves: the measured peak for an image of ``max_pixels`` pixels plus the 25 %
    headroom of Ray Data's high-memory check (``bench/decode_memory.py``, ``bench/results/decode_memory.json``)."""
    return int(1.25 * (DECODE_BASE_BYTES + DECODE_BYTES_PER_PIXEL * max_pixels))


class JobError(RuntimeError):
    """The job cannot run (config/run-id conflict); raised before any labeling work."""


def _prepare(seg_cfg, mc, vocab, cache_uri: str, row_options: Dict, background: str, threads: int,
             s3_endpoint: Optional[str]) -> Dict:
    """Ray task: load the model once, read the cached text embeddings or compute them, and the provenance.

    The driver writes a freshly computed cache (this task may run on a node whose disk it cannot see)."""
    import torch

    from pipeline.models import build_model
    from pipeline.segmenter import Segmenter
    from pipeline.segments import background_ids
    from pipeline.text import encode_vocabulary

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)  # text-encoding progress reaches the driver's log
    storage.apply_endpoint(s3_endpoint)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, threads))
    net, digest = build_model(mc)
    te = encode_vocabulary(mc, vocab, net, digest, cache_uri=cache_uri, write_cache=False)
    prov = Segmenter(seg_cfg, mc, net, digest, vocab, te).provenance()
    exclude = background_ids(seg_cfg.vocabulary, vocab.class_names, background)
    job_hash = hashlib.sha256(json.dumps([prov["config_hash"], row_options, exclude]).encode()).hexdigest()[:16]
    return dict(text=te, provenance={**prov, "config_hash": job_hash}, class_names=list(vocab.class_names),
                exclude=exclude)


def _write_text_cache(cache_uri: str, te) -> None:
    """Write the text embeddings the prepare task computed, from the driver, unless already cached."""
    from pipeline.text import cache_target

    target = cache_target(cache_uri, te.key)
    if not storage.exists(target):
        te.save(target)
        log.info("text embeddings cached at %s", target)


def _cluster_address(cfg: LabelJobConfig) -> Optional[str]:
    return cfg.ray_address or os.environ.get("RAY_ADDRESS") or None


def _init_ray(cfg: LabelJobConfig) -> bool:
    """Connect or start Ray; True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = _cluster_address(cfg)
    ray.init(address=address) if address else ray.init(address="local")
    return True


def _choose_run(cfg: LabelJobConfig, output: str, config_hash: str) -> str:
    """The run id to (re)start: explicit, this config's single unfinished run, or a new timestamped id."""
    unfinished = commit.find_unfinished(output, config_hash, exclude_run=cfg.run_id)
    if cfg.run_id is not None:
        if unfinished:
            raise JobError(f"run(s) {unfinished} of this config are unfinished; resume with --run-id {unfinished[0]} "
                           "first (a second run now could label the same images twice)")
        return cfg.run_id
    if len(unfinished) > 1:
        raise JobError(f"several unfinished runs of this config: {unfinished}; resume each with --run-id")
    if unfinished:
        log.warning("resuming unfinished run %s of the same config", unfinished[0])
        return unfinished[0]
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def _plan_meta(cfg, run_id: str, prep: Dict, seg_cfg, mc, shards: int, rows: int) -> Dict:
    return dict(run_id=run_id, config_hash=prep["provenance"]["config_hash"], provenance=prep["provenance"],
                categories=[{"id": i, "name": n} for i, n in enumerate(prep["class_names"])],
                excluded_category_ids=prep["exclude"], shards=shards, rows=rows,
                config={"job": cfg.to_dict(), "segmenter": seg_cfg.to_dict(), "model": mc.to_dict()},
                created_at=datetime.datetime.now(datetime.timezone.utc).isoformat())


def _register(cfg, output: str, index: pa.Table, prep: Dict, seg_cfg, mc) -> Optional[str]:
    """Find or create the run to work on; None when there is nothing left to label."""
    config_hash = prep["provenance"]["config_hash"]
    run_id = _choose_run(cfg, output, config_hash)
    run = commit.run_uri(output, run_id)
    if storage.exists(storage.join(run, commit.PLAN)):
        meta = commit.read_plan_meta(run)
        if meta["config_hash"] != config_hash:
            raise JobError(f"run {run_id} was planned with config {meta['config_hash']}, this job is {config_hash}; "
                           "use a new --run-id")
        return run_id
    seen = commit.committed_statuses(output, config_hash)
    pending = commit.exclude_done(index, seen, RETRY_POLICIES[cfg.retry])
    if pending.num_rows == 0:
        return None
    plan = commit.assign_shards(pending, cfg.shard_size)
    shards = -(-plan.num_rows // cfg.shard_size)
    if not commit.write_plan(run, plan, _plan_meta(cfg, run_id, prep, seg_cfg, mc, shards, plan.num_rows)):
        raise JobError(f"run {run_id} was registered concurrently by another job")
    log.info("run %s: %d images in %d shards (%d already labeled)", run_id, plan.num_rows, shards,
             index.num_rows - pending.num_rows)
    return run_id


class ShardWriter:
    """Collects actor output batches per shard; writes a shard's part file once all its rows arrived."""

    def __init__(self, run: str, expected: Dict[int, int], metadata: Dict[str, str]):
        self.run, self.expected, self.metadata = run, dict(expected), metadata
        self.buffers: Dict[int, List[pa.Table]] = collections.defaultdict(list)
        self.counts: Dict[int, int] = collections.Counter()
        self.written: List[int] = []
        self.rows = 0

    def add(self, batch: pa.Table) -> None:
        shards = batch.column("_shard").to_pylist()
        for shard in sorted(set(shards)):
            part = batch.filter(pc.equal(batch.column("_shard"), shard))
            self.buffers[shard].append(part)
            self.counts[shard] += part.num_rows
            if self.counts[shard] == self.expected[shard]:
                self._flush(shard)

    def _flush(self, shard: int) -> None:
        tables = self.buffers.pop(shard)
        stages = {c[3:]: float(sum(pc.sum(t.column(c)).as_py() or 0.0 for t in tables)) for c in TIMING_COLUMNS}
        errors = commit.error_groups(pa.concat_tables(tables).select(["status", "error", "source_uri"]))
        meta = {**self.metadata, "reslabel.shard": str(shard),
                "reslabel.part_stats": json.dumps({"stage_seconds": stages, "errors": errors})}
        table = commit.part_table(tables, meta)
        if table.num_rows != self.expected[shard] or len(set(table.column("image_id").to_pylist())) != table.num_rows:
            raise RuntimeError(f"shard {shard}: {table.num_rows} rows for {self.expected[shard]} planned images")
        if not commit.write_part(self.run, shard, table):
            log.warning("shard %d of %s was already committed; kept the existing part", shard, self.run)
        self.written.append(shard)
        self.rows += table.num_rows

    def missing(self) -> List[int]:
        return sorted(set(self.expected) - set(self.written))


def _label(cfg, run: str, todo: pa.Table, prep: Dict, text_ref, seg_cfg, mc, vocab,
           metadata: Dict[str, str]) -> ShardWriter:
    """Run the Ray Data pipeline over ``todo`` (plan rows of uncommitted shards), writing parts as shards complete."""
    import ray

    expected = collections.Counter(todo.column("_shard").to_pylist())
    writer = ShardWriter(run, expected, metadata)
    k = cfg.read_batch_size
    per_block = max(k, -(-todo.num_rows // MAX_INPUT_BLOCKS))  # enough parallelism, bounded driver puts
    ds = ray.data.from_arrow([todo.slice(i, per_block) for i in range(0, todo.num_rows, per_block)])
    # memory: room for one max-pixels decode; also keeps decode in CPU tasks, out of the actor (no fusion)
    ds = ds.map_batches(read_decode, batch_format="pyarrow", batch_size=k, num_cpus=1,
                        memory=decode_memory(cfg.max_pixels),
                        udf_modifying_row_count=False,
                        fn_kwargs=dict(seg_config=seg_cfg, bytes_column=cfg.bytes_column, max_pixels=cfg.max_pixels,
                                       s3_endpoint=cfg.s3_endpoint))
    ds = ds.map_batches(
        SegmentStage, batch_format="pyarrow", batch_size=cfg.batch_size, udf_modifying_row_count=False,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), num_gpus=cfg.gpus_per_actor or None,
        num_cpus=cfg.cpus_per_actor, resources=cfg.actor_resources or None,
        fn_constructor_kwargs=dict(seg_config=seg_cfg, model_config=mc, vocabulary=vocab, text_embeddings=text_ref,
                                   provenance=prep["provenance"], run_id=metadata["reslabel.run_id"],
                                   exclude_ids=prep["exclude"], torch_threads=int(cfg.cpus_per_actor),
                                   s3_endpoint=cfg.s3_endpoint))
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        writer.add(batch)
    return writer


def run_job(cfg: LabelJobConfig) -> Dict:
    """Run (or resume, or finish) one labeling job; returns the summary also stored in ``_SUCCESS.json``.

    The run is committed whatever its rows say; ``policy_failure(summary, cfg.max_error_rate)`` tells whether
    the job should be reported as failed (the CLI exits 3)."""
    import ray

    from pipeline.models import check_weights, inline_arch
    from pipeline.vocabulary import Vocabulary

    t0 = time.perf_counter()
    cfg.validate()
    cluster.check_relative(cfg.task_paths(), cluster.Submission.from_env(), os.getcwd())
    cfg = cfg.with_absolute_paths()
    storage.apply_endpoint(cfg.s3_endpoint)
    output = storage.normalize(cfg.output)
    seg_cfg = cfg.segmenter_config()
    vocab = Vocabulary.load(seg_cfg.vocabulary, seg_cfg.templates)  # read once, here; shipped to every task
    mc = inline_arch(cfg.model_config())  # a JSON architecture config travels as text, too
    started = False
    try:
        if _cluster_address(cfg) and not ray.is_initialized():
            started = _init_ray(cfg)  # connect first: the cluster's nodes decide which local paths are safe
        if ray.is_initialized():
            cluster.check_local(cfg.task_paths(), cluster.Placement.of_running_ray(), cfg.shared_fs)
        if cfg.weights:
            check_weights(cfg.weights)  # a missing file fails here, before Ray and the model load
        run_uri = commit.run_uri(output, cfg.run_id) if cfg.run_id else None
        if run_uri and storage.exists(storage.join(run_uri, commit.SUCCESS)):
            log.warning("run %s is already committed; nothing to do", cfg.run_id)
            return storage.read_json(storage.join(run_uri, commit.SUCCESS))
        index = build_index(storage.normalize(cfg.input), cfg.input_format,
                            InputOptions(cfg.bytes_column, cfg.id_column, cfg.uri_column))
        storage.check_writable(output)
        started = _init_ray(cfg) or started
        prep = _run_prepare(cfg, output, seg_cfg, mc, vocab)
        t_prepare = time.perf_counter() - t0
        run_id = _register(cfg, output, index, prep, seg_cfg, mc)
        if run_id is None:
            log.warning("nothing to label: all %d inputs are committed for config %s", index.num_rows,
                        prep["provenance"]["config_hash"])
            return dict(run_id=None, rows=0, new_images=0, config_hash=prep["provenance"]["config_hash"])
        return _label_and_commit(cfg, output, run_id, prep, seg_cfg, mc, vocab, t0, t_prepare)
    finally:
        if started:
            ray.shutdown()


def _run_prepare(cfg: LabelJobConfig, output: str, seg_cfg, mc, vocab) -> Dict:
    """The prepare task (model + text embeddings, once per job), then the text cache written from here."""
    import ray

    cache_uri = cfg.text_cache or storage.join(output, "_text_cache")
    log.info("preparing: model %s and the text embeddings of %d queries x %d templates (cache %s)", mc.arch,
             vocab.num_queries, len(vocab.templates), cache_uri)
    task = ray.remote(max_calls=1)(_prepare).options(  # its worker exits after: the model's memory is freed
        num_cpus=cfg.cpus_per_actor, num_gpus=min(cfg.gpus_per_actor, 1.0) or None)
    prep = ray.get(task.remote(seg_cfg, mc, vocab, cache_uri, cfg.row_options(), cfg.background,
                               int(cfg.cpus_per_actor), cfg.s3_endpoint))
    prep["provenance"]["code_version"] = code_version()  # the driver's: the code this job was submitted with
    _write_text_cache(cache_uri, prep["text"])
    return prep


def policy_failure(summary: Dict, max_error_rate: float) -> Optional[str]:
    """Why a committed run counts as a failed job (no ``ok`` row, or more than ``max_error_rate`` of its rows
    not ``ok``), or None. The rows stay committed either way: they are true."""
    rows = int(summary.get("rows") or 0)
    if not summary.get("run_id") or rows == 0:
        return None
    failed = rows - int(summary.get("by_status", {}).get("ok", 0))
    if failed == rows:
        return f"no image was labeled: all {rows} rows failed"
    if failed / rows > max_error_rate:
        return f"{failed} of {rows} rows failed ({failed / rows:.1%}), above --max-error-rate {max_error_rate:g}"
    return None


def _label_and_commit(cfg, output: str, run_id: str, prep: Dict, seg_cfg, mc, vocab, t0: float,
                      t_prepare: float) -> Dict:
    import ray

    run = commit.run_uri(output, run_id)
    plan, meta = commit.read_plan(run)
    done = commit.committed_shards(run)
    todo = plan.filter(pc.invert(pc.is_in(plan.column("_shard"), value_set=pa.array(sorted(done), pa.int32()))))
    metadata = {"reslabel.run_id": run_id, "reslabel.categories": json.dumps(meta["categories"]),
                "reslabel.config": json.dumps(meta["config"], default=str),
                "reslabel.provenance": json.dumps(meta["provenance"]),
                "reslabel.excluded_category_ids": json.dumps(meta["excluded_category_ids"])}
    t1 = time.perf_counter()
    labeled = 0
    if todo.num_rows:
        text_ref = ray.put(prep["text"])  # kept alive for the whole pipeline (actor restarts re-read it)
        writer = _label(cfg, run, todo, prep, text_ref, seg_cfg, mc, vocab, metadata)
        if writer.missing():
            raise RuntimeError(f"run {run_id}: shards {writer.missing()[:10]} got no rows; rerun to resume")
        labeled = writer.rows
    t_label = time.perf_counter() - t1
    parts = commit.read_part_stats(run)
    attempt = dict(images_labeled=labeled, shards_resumed=len(done), wall_seconds=round(time.perf_counter() - t0, 3),
                   prepare_seconds=round(t_prepare, 3), label_seconds=round(t_label, 3),
                   images_per_second=round(labeled / t_label, 3) if t_label > 0 and labeled else 0.0)
    record = commit.success_record(run_id, run, meta, parts, attempt)
    if record["rows"] != meta["rows"]:
        raise RuntimeError(f"run {run_id}: {record['rows']} committed rows for {meta['rows']} planned images")
    commit.write_success(run, record)
    return record
