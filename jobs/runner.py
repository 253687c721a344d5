"""Orchestration of one labeling job: validate → the run's hashes (driver, no model) → the run lease of (output,
job_hash) (``jobs.lease``: skip or wait while a live run holds it) → index the inputs (tasks) →
plan and register (tasks; nothing left → done) → prepare (model + text once) → label and write parts (tasks +
actors) → commit (``_SUCCESS.json`` from the write results).

``run_job(config)`` is the Python API behind ``python -m jobs.label``; it reuses a Ray already
initialised by the caller, else connects to ``$RAY_ADDRESS``/``ray_address`` or starts a local Ray.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import time
import uuid
from typing import Dict, Iterator, List, Optional, Tuple

from jobs import cluster, commit, lease, resources, storage
from jobs.config import RETRY_POLICIES, LabelJobConfig
from jobs.devices import ray_worker_device, summarize_devices
from jobs.dispatch import Actors, Dispatch, label_shards
from jobs.inputs import InputError, InputOptions
from jobs.planner import Indexed, PlanLocator, Planner
from jobs.stages import SegmentStage, read_shard
from schemas import layout
from schemas.version import code_version

log = logging.getLogger("reslabel.job")
DECODE_BASE_BYTES = 160 * 2**20  # peak USS of a read+decode task on 16 VGA or HD images: 132-163 MiB measured
DECODE_BYTES_PER_PIXEL = 16  # measured 15-16 bytes per decoded pixel (bytes, Pillow's RGB, numpy copy, resize)


def decode_memory(max_pixels: int, shard_bytes: int = 0) -> int:
    """Bytes a read+decode task reserves: the measured peak for an image of ``max_pixels`` pixels, plus the
    shard's resized images it holds (``shard_bytes``), plus 25 % headroom
    (``bench/decode_memory.py``, ``bench/results/decode_memory.json``)."""
    return int(1.25 * (DECODE_BASE_BYTES + DECODE_BYTES_PER_PIXEL * max_pixels + shard_bytes))


def _peak_rss_mib() -> float:
    """This process's peak resident memory (MiB), as the kernel counts it."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resized_shard_bytes(seg_cfg, shard_size: int) -> int:
    """Upper estimate of a shard's resized RGB images: short side ``resize_short``, aspect ratio up to 2."""
    side = seg_cfg.resize_short
    return shard_size * side * min(seg_cfg.resize_long, 2 * side) * 3


class JobError(RuntimeError):
    """The job cannot run (config/run-id conflict); raised before any labeling work."""


def _identity(cfg: LabelJobConfig, seg_cfg, mc, vocab) -> Dict:
    """What the run's rows say about how they were made, computed on the driver without loading the model: the
    provenance (weights digested as ``build_model`` would report them, ``pipeline.model.clip.weights_identity``),
    the job's hash over the segmenter's hash and the options that change rows, the classes and the excluded
    background. Planning needs only this, so a run with nothing to label never loads a model."""
    from pipeline.labels.segments import background_ids
    from pipeline.model.clip import weights_identity
    from pipeline.prepare import provenance

    prov = provenance(seg_cfg, mc, weights_identity(mc), vocab)
    exclude = background_ids(seg_cfg.vocabulary, vocab.class_names, cfg.background)
    job_hash = hashlib.sha256(json.dumps([prov["segmenter_hash"], cfg.row_options(), exclude]).encode())
    job_hash = job_hash.hexdigest()[:16]
    prov.update(job_hash=job_hash, code_version=code_version())  # the driver's: the code this job was submitted with
    return dict(provenance=prov, class_names=list(vocab.class_names), exclude=exclude)


def _prepare(seg_cfg, mc, vocab, cache_uri: Optional[str], threads: int, s3_endpoint: Optional[str]) -> Dict:
    """Ray task: ``pipeline.prepare`` (the model once, the cached text embeddings or computed ones); returns the
    text embeddings and the weights digest of the model it built (the driver checks it against its own).

    The driver writes a freshly computed cache (this task may run on a node whose disk it cannot see)."""
    import torch

    from pipeline.prepare import prepare

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)  # text-encoding progress reaches the driver's log
    storage.apply_endpoint(s3_endpoint)
    mc = dataclasses.replace(mc, device=ray_worker_device(mc.device))  # a GPU only if this task asked for one
    if mc.device == "cpu":
        torch.set_num_threads(max(1, threads))
    prepared = prepare(seg_cfg, mc, vocabulary=vocab, text_cache=cache_uri, write_cache=False)
    return dict(text=prepared.text, weights_digest=prepared.weights_digest)


def _write_text_cache(cache_uri: str, te) -> str:
    """Write the text embeddings the prepare task computed, from the driver, unless already cached; returns the
    file's URI (the segment actors load them from there, also after a restart: no object-store argument)."""
    from pipeline.model.text import cache_target

    target = cache_target(cache_uri, te.key)
    if not storage.exists(target):
        te.save(target)
        log.info("text embeddings cached at %s", target)
    return target


def _cluster_address(cfg: LabelJobConfig) -> Optional[str]:
    return cfg.ray_address or os.environ.get("RAY_ADDRESS") or None


def _init_ray(cfg: LabelJobConfig, timings: Dict[str, float]) -> bool:
    """Connect or start Ray; True when this call started it (and must shut it down). Adds the seconds it took
    to ``timings["ray_start_seconds"]``."""
    import ray

    if ray.is_initialized():
        return False
    t = time.perf_counter()
    address = _cluster_address(cfg)
    if address:
        ray.init(address=address)
    else:  # the local Ray of this one job: no dashboard (its ~10 processes cost 2-3 CPU-seconds per start; to
        # watch a local run there, start Ray with `ray start --head` and pass --ray-address, docs/job.md)
        ray.init(address="local", include_dashboard=False)
    timings["ray_start_seconds"] = round(timings.get("ray_start_seconds", 0.0) + time.perf_counter() - t, 3)
    return True


def _choose_run(cfg: LabelJobConfig, output: str, job_hash: str) -> str:
    """The run id to (re)start: explicit, this config's single unfinished run, or a new timestamped id."""
    unfinished = commit.find_unfinished(output, job_hash, exclude_run=cfg.run_id)
    if cfg.run_id is not None:
        if unfinished:
            raise JobError(f"run(s) {unfinished} of this config are unfinished; resume with --run-id {unfinished[0]} "
                           "first (a second run now could label the same images twice)")
        return cfg.run_id
    if len(unfinished) > 1:
        raise JobError(f"several unfinished runs of this config: {unfinished}; resume each with --run-id")
    if unfinished:
        log.warning("resuming unfinished run %s of the same config (no live run holds its lease)", unfinished[0])
        return unfinished[0]
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def _manifest(cfg, run_id: str, prep: Dict, seg_cfg, mc, planned) -> Dict:
    """The run's registration (``_plan.json``): config, provenance, categories and the plan files."""
    return dict(layout=layout.LAYOUT_VERSION, run_id=run_id, job_hash=prep["provenance"]["job_hash"],
                provenance=prep["provenance"],
                categories=[{"id": i, "name": n} for i, n in enumerate(prep["class_names"])],
                excluded_category_ids=prep["exclude"], shard_size=cfg.shard_size, rows=planned.rows,
                shards=-(-planned.rows // cfg.shard_size), input_kind=planned.kind, plan_files=planned.files,
                config={"job": cfg.to_dict(), "segmenter": seg_cfg.to_dict(), "model": mc.to_dict()},
                created_at=datetime.datetime.now(datetime.timezone.utc).isoformat())


def _register(cfg, output: str, planner: Planner, indexed: Optional[Indexed], attempt: str, prep: Dict, seg_cfg,
              mc, held: lease.Lease) -> Tuple[Optional[str], Optional[Dict], bool]:
    """Find or create the run to work on: ``(run_id, manifest, created)`` (``created``: registered by this call),
    or ``(None, None, False)`` when nothing is left. Called only while ``held`` is this config's lease: an
    unfinished run found here is not live."""
    job_hash = prep["provenance"]["job_hash"]
    run_id = _choose_run(cfg, output, job_hash)
    run = commit.run_uri(output, run_id)
    manifest = commit.read_manifest(run)
    if manifest is not None:
        if layout.job_hash_of(manifest) != job_hash:
            raise JobError(f"run {run_id} was planned with config {layout.job_hash_of(manifest)}, this job is "
                           f"{job_hash}; use a new --run-id")
        return run_id, manifest, False
    if indexed is None:  # a registered run was expected here (see run_job)
        raise JobError(f"run {run_id} is not registered any more under {output}")
    planned = planner.write_plan(indexed, run, attempt, cfg.shard_size, commit.committed_part_uris(output, job_hash))
    if planned.rows == 0:
        return None, None, False
    manifest = _manifest(cfg, run_id, prep, seg_cfg, mc, planned)
    held.check()  # a driver that lost its lease registers nothing
    if not commit.write_manifest(run, manifest):
        raise JobError(f"run {run_id} was registered concurrently by another job")
    log.info("run %s: %d images in %d shards (%d already labeled)", run_id, planned.rows, manifest["shards"],
             planned.excluded)
    return run_id, manifest, True


def _withdraw(run: str) -> None:
    """Delete a run this attempt registered and never labeled (its model could not be prepared), so that a
    config that cannot load leaves no unfinished run behind for the next attempt to resume. Best effort: a
    leftover is an unfinished run with no parts, which the next run of the config resumes."""
    try:
        fs, path = storage.fs_for(run)
        if storage.kind(run) is not None:
            fs.rm(path, recursive=True)
    except OSError as e:
        log.warning("could not withdraw run %s: %s", run, e)


def _pool_options(cfg: LabelJobConfig, seg_cfg) -> Tuple[Dict, Dict]:
    """Ray options of the read tasks and of the segment actors."""
    read_options = dict(num_cpus=resources.READ_CPUS,
                        memory=decode_memory(cfg.max_pixels, resized_shard_bytes(seg_cfg, cfg.shard_size)))
    actor_options = dict(num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None,
                         resources=cfg.actor_resources or None)
    return read_options, {k: v for k, v in actor_options.items() if v is not None}


def _check_pool(cfg: LabelJobConfig, seg_cfg) -> resources.PoolPlan:
    """The resource budget, before any work (``jobs.resources``): the pool to start, or ``BudgetError``."""
    read_options, actor_options = _pool_options(cfg, seg_cfg)
    plan = resources.check_budget(resources.ClusterView.of_running_ray(), resources.ray_ask(actor_options),
                                  cfg.num_actors, cfg.max_actors or cfg.num_actors, read_options["num_cpus"],
                                  flags=f"--num-actors {cfg.actors_spec()} --cpus-per-actor {cfg.cpus_per_actor:g}")
    for note in plan.notes:
        log.warning(note)
    return plan


def _dispatch(cfg: LabelJobConfig, seg_cfg, pool: Optional[resources.PoolPlan] = None) -> Dispatch:
    """The pool's shape from the resource budget ``pool``; without it the budget is checked again here (the
    cluster may have changed since the check before planning)."""
    pool = pool or _check_pool(cfg, seg_cfg)
    read_options, actor_options = _pool_options(cfg, seg_cfg)
    every = float(os.environ.get("RESLABEL_PROGRESS_S", "30"))  # progress lines; pending-actor warnings after it
    return Dispatch(num_actors=pool.start, min_actors=pool.min_actors, max_actors=pool.max_actors,
                    read_options=read_options, actor_options=actor_options,
                    read_ahead=max(2 * pool.start, int(pool.read_cpus_left)), progress_every_s=every,
                    pending_warn_s=every, shrink_after_s=4 * every)


def _actor_kwargs(cfg: LabelJobConfig, prep: Dict, text_uri: str, seg_cfg, mc, vocab) -> Dict:
    """The segment actors' constructor arguments: small values only (no object-store argument, so that Ray can
    restart them); the run they write to comes with each call (``_call_context``)."""
    return dict(seg_config=seg_cfg, model_config=mc, vocabulary=vocab, text_embeddings=text_uri,
                provenance=prep["provenance"], run_id=None, exclude_ids=prep["exclude"],
                torch_threads=int(cfg.cpus_per_actor),
                row_spec=dict(instances=cfg.instances, min_instance_area=cfg.min_instance_area,
                              ignore_below=cfg.ignore_below),
                images_per_call=cfg.images_per_call, s3_endpoint=cfg.s3_endpoint)


def _label(cfg, run: str, plan: PlanLocator, todo: List[int], prep: Dict, seg_cfg, mc, vocab,
           metadata: Dict[str, str], segment_stage: type, actors: Optional[Actors]) -> Iterator[Dict]:
    """Label the shards ``todo`` (``jobs.dispatch``: a read task and an actor call per shard, on ``actors`` when
    they were started ahead); yields one write result per committed part."""
    dispatch = actors.dispatch if actors is not None else _dispatch(cfg, seg_cfg)
    read_kwargs = dict(plan=plan, seg_config=seg_cfg, bytes_column=cfg.bytes_column, max_pixels=cfg.max_pixels,
                       threads=cfg.read_threads, s3_endpoint=cfg.s3_endpoint)
    context = dict(run=run, run_id=metadata[layout.META_RUN_ID], part_metadata=metadata)
    return label_shards(todo, read_fn=read_shard, read_kwargs=read_kwargs, actor_cls=segment_stage,
                        actor_kwargs=_actor_kwargs(cfg, prep, prep["text_uri"], seg_cfg, mc, vocab),
                        dispatch=dispatch, actors=actors, context=context)


def run_job(cfg: LabelJobConfig, *, segment_stage: type = SegmentStage) -> Dict:
    """Run (or resume, or finish) one labeling job; returns the summary also stored in ``_SUCCESS.json``.

    The run is committed whatever its rows say; ``policy_failure(summary, cfg.max_error_rate)`` tells whether
    the job should be reported as failed (the CLI exits 3). A live run of the same config and output holds the
    run lease (``jobs.lease``): ``cfg.if_running == "skip"`` raises ``lease.RunInProgress`` (the CLI exits 75),
    ``"wait"`` waits until it commits or its lease expires. ``segment_stage`` is the actor class of the segment
    stage; only ``bench/job_scale.py`` replaces it (a stand-in that skips the model, to time the machinery)."""
    import ray

    from pipeline.model.clip import check_weights, inline_arch
    from pipeline.model.vocabulary import Vocabulary

    t0 = time.perf_counter()
    timings: Dict[str, float] = {}
    cfg.validate()
    cluster.check_relative(cfg.task_paths(), cluster.Submission.from_env(), os.getcwd())
    cfg = cfg.with_absolute_paths()
    storage.apply_endpoint(cfg.s3_endpoint)
    output, source = storage.normalize(cfg.output), storage.normalize(cfg.input)
    seg_cfg = cfg.segmenter_config()
    vocab = Vocabulary.load(seg_cfg.vocabulary, seg_cfg.templates)  # read once, here; shipped to every task
    mc = inline_arch(cfg.model_config())  # a JSON architecture config travels as text, too
    started = False
    try:
        if _cluster_address(cfg) and not ray.is_initialized():
            started = _init_ray(cfg, timings)  # connect first: the nodes decide which local paths are safe
        if ray.is_initialized():
            cluster.check_local(cfg.task_paths(), cluster.Placement.of_running_ray(), cfg.shared_fs)
        if cfg.weights:
            check_weights(cfg.weights)  # a missing file fails here, before Ray and the model load
        resumed = commit.run_uri(output, cfg.run_id) if cfg.run_id else None
        if resumed and storage.exists(storage.join(resumed, layout.SUCCESS)):
            log.warning("run %s is already committed; nothing to do", cfg.run_id)
            return storage.read_json(storage.join(resumed, layout.SUCCESS))
        registered = resumed is not None and commit.read_manifest(resumed) is not None
        if not registered and storage.kind(source) is None and not any(ch in source for ch in "*?["):
            raise InputError(f"input {source}: no such file, directory or prefix")
        storage.check_writable(output)
        t = time.perf_counter()
        prep = _identity(cfg, seg_cfg, mc, vocab)  # the hashes, without the model
        timings["hash_seconds"] = round(time.perf_counter() - t, 3)
        with contextlib.ExitStack() as leases:  # the config's run lease, released on return and on any error
            t = time.perf_counter()  # before Ray starts: a run that skips or waits holds no cluster resources
            held = leases.enter_context(_acquire_lease(cfg, output, prep["provenance"]["job_hash"]))
            timings["lease_seconds"] = round(time.perf_counter() - t, 3)
            started = _init_ray(cfg, timings) or started
            pool = _check_pool(cfg, seg_cfg)  # the resource budget, before any work (refused: one `error:` line)
            # the text embeddings: from the cache when it holds them (no model), else the prepare task — started
            # now, beside planning, when this run will surely have work (a resume, or the config's first run)
            preparing = _Preparing(cfg, output, seg_cfg, mc, vocab, prep["provenance"]["weights_digest"])
            leases.callback(preparing.cancel)  # a run that ends before it needs the task does not wait for it
            early = registered or not _config_has_committed_run(output, prep["provenance"]["job_hash"])
            actors = None
            if early:
                preparing.start()
                if preparing.target is not None:  # the actors load their models meanwhile (text: at first call)
                    actors = _start_actors(cfg, _dispatch(cfg, seg_cfg, pool), prep, preparing.target, seg_cfg, mc,
                                           vocab, segment_stage, needs_prepare=preparing.cached is None)
                    if actors is not None:
                        leases.callback(actors.kill)  # no-op once label_shards has taken them over and ended
            t = time.perf_counter()
            planner = Planner(InputOptions(cfg.bytes_column, cfg.id_column, cfg.uri_column),
                              RETRY_POLICIES[cfg.retry], cfg.s3_endpoint)
            attempt = uuid.uuid4().hex[:8]
            staging = storage.join(output, layout.PLANNING, attempt)
            try:
                indexed = None if registered else planner.index(source, cfg.input_format, staging)  # listed once
                run_id, manifest, created = _register(cfg, output, planner, indexed, attempt, prep, seg_cfg, mc, held)
            finally:
                planner.discard(staging)
            timings["plan_seconds"] = round(time.perf_counter() - t, 3)
            if run_id is None:
                job_hash = prep["provenance"]["job_hash"]
                wall = time.perf_counter() - t0
                log.warning("nothing to label: every input is committed for config %s (%.1f s, of which Ray "
                            "start-up %.1f s; %s)", job_hash, wall, timings.get("ray_start_seconds", 0.0),
                            "no model loaded" if preparing.ref is None else "the prepare task is cancelled")
                return dict(run_id=None, rows=0, new_images=0, job_hash=job_hash,
                            segmenter_hash=prep["provenance"]["segmenter_hash"],
                            attempt=dict(wall_seconds=round(wall, 3), **timings))
            held.update(run_id=run_id, state="labeling")
            t = time.perf_counter()
            try:
                prep["text"], prep["text_uri"] = preparing.result()
            except BaseException:
                if created:  # nothing was labeled: leave no run behind for a config whose model cannot load
                    _withdraw(commit.run_uri(output, run_id))
                raise
            timings["prepare_seconds"] = round(time.perf_counter() - t, 3)  # the wait after planning
            prep["text_source"] = ("cache" if preparing.cached is not None else
                                   "prepare task, started with planning" if early else
                                   "prepare task, started after planning")
            return _label_and_commit(cfg, output, run_id, manifest, prep, seg_cfg, mc, vocab, t0, timings,
                                     segment_stage, held, actors)
    finally:
        if started:
            ray.shutdown()


def _start_actors(cfg: LabelJobConfig, dispatch: Dispatch, prep: Dict, text_uri: str, seg_cfg, mc, vocab,
                  segment_stage: type, needs_prepare: bool) -> Optional[Actors]:
    """The segment actors, started before planning when the run will surely have work: each loads its model
    while the driver plans and the prepare task encodes the text, and reads the text embeddings from
    ``text_uri`` at its first call (the driver writes them there before any call). None (they start later, as
    usual) when the prepare task still has to run and the alive nodes cannot hold it beside them: an actor-sized
    task is taken as its size (it asks for the actors' CPUs and at most one GPU)."""
    if needs_prepare:  # the prepare task must fit beside them (the reads wait for it), else it could never start
        view = resources.ClusterView.of_running_ray()
        if not resources.room_beside(view, resources.ray_ask(dispatch.actor_options), dispatch.num_actors):
            log.info("the segment actors start after the prepare task: the alive nodes (%s) cannot hold %d of "
                     "them and the task together", view.describe(), dispatch.num_actors)
            return None
    actors = Actors(segment_stage, _actor_kwargs(cfg, prep, text_uri, seg_cfg, mc, vocab), dispatch)
    log.info("started %d segment actor(s) while planning (models load meanwhile)", len(actors.slots))
    return actors


def _acquire_lease(cfg: LabelJobConfig, output: str, job_hash: str) -> lease.Lease:
    """This config's run lease (``jobs.lease``), taken before any unfinished run is looked for or planning
    starts: a live run of the config makes this run skip (``RunInProgress``) or wait (``--if-running``)."""
    return lease.Lease(output, job_hash, cfg.lease_ttl).acquire(cfg.if_running)


def _text_cache_uri(cfg: LabelJobConfig, output: Optional[str]) -> Optional[str]:
    return cfg.text_cache or (storage.join(output, layout.TEXT_CACHE) if output else None)


def _config_has_committed_run(output: str, job_hash: str) -> bool:
    """Whether a committed run of this config exists under ``output`` (then a new run may have nothing to do)."""
    return any(r["committed"] and r["job_hash"] == job_hash for r in commit.list_runs(output))


class _Preparing:
    """The run's text embeddings: read from the text cache on the driver when it already holds them for this
    model and vocabulary (no model is built at all), else computed by the prepare task (model + text, once per
    job). ``start()`` launches the task without waiting (so it overlaps planning), ``result()`` returns
    ``(text embeddings, the cache file's URI)``, starting the task first if needed; ``cancel()`` stops a task
    whose result nobody will read. The model the task built must have the weights the driver hashed the run
    with. Without ``--text-cache`` and ``output`` (``jobs.labeler``), no cache is read or written (URI None)."""

    def __init__(self, cfg: LabelJobConfig, output: Optional[str], seg_cfg, mc, vocab, weights_digest: str):
        from pipeline.model.text import cache_target, text_key

        self.cfg, self.seg_cfg, self.mc, self.vocab, self.weights_digest = cfg, seg_cfg, mc, vocab, weights_digest
        self.cache_uri = _text_cache_uri(cfg, output)
        self.key = text_key(mc.arch, weights_digest, mc.dtype, vocab)
        self.target = cache_target(self.cache_uri, self.key) if self.cache_uri else None
        self.cached = self._read_cache()
        self.ref = None

    def _read_cache(self):
        from pipeline.model.text import TextEmbeddings

        if self.target is None:
            return None
        try:
            te = TextEmbeddings.load(self.target)
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a damaged cache file is computed again, not fatal
            log.warning("text cache %s could not be read (%s: %s); computing the embeddings again", self.target,
                        type(e).__name__, e)
            return None
        if te.key != self.key or not te.matches(self.vocab):
            log.warning("text cache %s does not hold this vocabulary's embeddings; computing them again", self.target)
            return None
        log.info("text embeddings read from the cache %s: no prepare task", self.target)
        return te

    def start(self) -> None:
        import ray

        if self.cached is not None or self.ref is not None:
            return
        log.info("preparing: model %s and the text embeddings of %d queries x %d templates (cache %s)",
                 self.mc.arch, self.vocab.num_queries, len(self.vocab.templates), self.cache_uri)
        cfg = self.cfg
        self.options = dict(num_cpus=cfg.cpus_per_actor, num_gpus=min(cfg.gpus_per_actor, 1.0) or None)
        task = ray.remote(max_calls=1)(_prepare).options(**self.options)  # its worker exits after: memory freed
        self.ref = task.remote(self.seg_cfg, self.mc, self.vocab, self.cache_uri, int(cfg.cpus_per_actor),
                               cfg.s3_endpoint)

    def result(self):
        import ray

        if self.cached is not None:
            return self.cached, self.target
        self.start()
        every, t0 = float(os.environ.get("RESLABEL_PROGRESS_S", "30")), time.monotonic()
        while not ray.wait([self.ref], timeout=every)[0]:  # a wait that says what it waits for
            log.warning("waiting %.0f s for the prepare task (model + text embeddings), which asks for %s; the "
                        "cluster lacks (ray status, pending demands): %s", time.monotonic() - t0,
                        resources.fmt(resources.ray_ask(self.options)),
                        resources.describe_demands(resources.pending_demands()))
        out, self.ref = ray.get(self.ref), None
        if out["weights_digest"] != self.weights_digest:
            raise JobError(f"weights {self.mc.weights or self.mc.pretrained}: the model was built from "
                           f"{out['weights_digest']}, the run was planned with {self.weights_digest} (the file "
                           "changed during the job?)")
        return out["text"], (_write_text_cache(self.cache_uri, out["text"]) if self.cache_uri else None)

    def cancel(self) -> None:
        import ray

        if self.ref is not None:
            ray.cancel(self.ref, force=True)
            self.ref = None


def prepare_rows(cfg: LabelJobConfig, seg_cfg, mc, vocab, output: Optional[str] = None) -> Dict:
    """What labeling actors need to make the job's rows, as the job computes it: ``provenance`` (``job_hash``,
    ``segmenter_hash``, ``code_version``), ``class_names``, ``exclude`` (the driver, no model) and ``text`` (the
    prepare task). For ``jobs.labeler`` (the job itself calls the two steps apart: no model without work)."""
    prep = _identity(cfg, seg_cfg, mc, vocab)
    prep["text"], prep["text_uri"] = _Preparing(cfg, output, seg_cfg, mc, vocab,
                                                prep["provenance"]["weights_digest"]).result()
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


def _label_and_commit(cfg, output: str, run_id: str, manifest: Dict, prep: Dict, seg_cfg, mc, vocab, t0: float,
                      timings: Dict[str, float], segment_stage: type, held: lease.Lease,
                      actors: Optional[Actors] = None) -> Dict:
    run = commit.run_uri(output, run_id)
    plan = PlanLocator.of(run, manifest["plan_files"], int(manifest["shard_size"]))
    done = commit.committed_shards(run) & set(range(plan.shards))
    todo = [k for k in range(plan.shards) if k not in done]
    metadata = {layout.META_RUN_ID: run_id, layout.META_CATEGORIES: json.dumps(manifest["categories"]),
                layout.META_CONFIG: json.dumps(manifest["config"], default=str),
                layout.META_PROVENANCE: json.dumps(manifest["provenance"]),
                layout.META_EXCLUDED: json.dumps(manifest["excluded_category_ids"])}
    t1, cpu1 = time.perf_counter(), time.process_time()
    parts: List[Dict] = []
    devices_used: List[Optional[Dict]] = []
    if todo:
        for result in _label(cfg, run, plan, todo, prep, seg_cfg, mc, vocab, metadata, segment_stage, actors):
            held.check()  # a driver that lost its lease stops; its parts are complete, the next run resumes
            if not result["written"]:
                log.warning("shard %d of %s was already committed; kept the existing part", result["shard"], run)
            parts.append(dict(shard=result["shard"], name=result["name"], rows=result["rows"],
                              **json.loads(result["stats"])))
            devices_used.append(result.get("device"))
        missing = sorted(set(todo) - {p["shard"] for p in parts})
        if missing:
            raise RuntimeError(f"run {run_id}: shards {missing[:10]} got no rows; rerun to resume")
    labeled = sum(p["rows"] for p in parts)
    t_label, cpu_label = time.perf_counter() - t1, time.process_time() - cpu1
    parts += commit.read_part_stats(run, done)  # parts an earlier attempt committed: their footers only
    attempt = dict(images_labeled=labeled, shards_resumed=len(done), wall_seconds=round(time.perf_counter() - t0, 3),
                   **timings, text_embeddings=prep.get("text_source"), label_seconds=round(t_label, 3),
                   images_per_second=round(labeled / t_label, 3) if t_label > 0 and labeled else 0.0,
                   driver_cpu_label_seconds=round(cpu_label, 3), driver_peak_rss_mib=round(_peak_rss_mib(), 1),
                   devices=summarize_devices(devices_used))
    record = commit.success_record(run_id, run, manifest, parts, attempt)
    if record["rows"] != plan.rows:
        raise RuntimeError(f"run {run_id}: {record['rows']} committed rows for {plan.rows} planned images")
    held.check()
    commit.write_success(run, record)
    return record
