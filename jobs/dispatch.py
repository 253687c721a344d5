"""The driver's labeling loop: shard numbers out to read tasks and segment actors, one small result per shard back.

Per shard the driver submits one read task (``stages.read_shards``: plan rows → fetched, decoded, resized images,
which stay in the object store) and one actor call with that task's result as its argument (the actor labels the
images and writes the shard's part itself, ``stages.SegmentStage``), then receives one small write result. That is
the whole of the driver's work per shard (~5 ms of CPU, mostly Ray's own submission and object bookkeeping,
independent of the shard's rows), in the spirit of
img2dataset's distributor: the driver hands out shard ids and collects stats; it never sees a label row or a
pixel. (A Ray Data pipeline did this before; its streaming executor cost the driver 40-50 ms of CPU per block
plus ~33 ms per wall-second of scheduling, ten times this loop, ``bench/job_scale.py``.)

Failure handling (what the reliability tests exercise):

* an actor process dies (SIGKILL, OOM, its node lost): its running and queued calls fail at once and their
  shards go back to the front of the queue, for any actor; Ray restarts the actor (``max_restarts=-1``) and
  it gets work again once it answers a probe. An actor that cannot come back (its node and its resources are
  gone) just never answers: the other actors finish the run. A shard whose part was already written when its
  actor died is written no more: parts are committed no-clobber, and the second call reports the committed
  part's stats; a shard reported twice counts once;
* a read task's worker or node dies: Ray re-runs it (``max_retries=-1``), also when a finished result was lost
  with its node (lineage reconstruction: the driver owns every read result);
* an actor's constructor raises (bad weights, out of memory while loading): Ray does not restart such an actor;
  the slot gets a fresh actor and its shards are handed out again, up to ``init_deaths_allowed`` consecutive
  failures, then the constructor's error ends the job;
* anything else a call raises (a storage error writing a part, a plan file that cannot be read) ends the job;
  the parts committed so far stay and a rerun resumes.

The pool (``Dispatch``): ``num_actors`` actors are started up front. A shard goes only to an actor that has
answered a ``ready`` probe (it is ALIVE): an actor Ray cannot place yet (its resources are missing) gets none and
the run goes on with those that work; when some have waited ``pending_warn_s`` while others work, the driver warns,
naming what they ask and what the cluster lacks (``ray status``'s pending demands), and again every progress
interval. An elastic pool (``min_actors < max_actors``, ``--num-actors MIN-MAX``) grows by one actor at a time
when the alive nodes hold one more next to the reads' CPU budget, or when an autoscaler node type can host it
(the pending actor is the autoscaler's demand), and shrinks, down to ``min_actors``, by letting go of an actor
that waited ``shrink_after_s`` for a node while others work (its node went away, or the autoscaler is at its
maximum); it tries to grow again when the number of alive nodes changes (``jobs.resources``).

Backpressure: each actor holds at most ``depth`` calls (one labeling, the next one's pixels arriving), and at most
``read_ahead`` read results wait for an actor, so the object store holds about
``(num_actors * depth + read_ahead)`` shards of resized pixels at any time.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

log = logging.getLogger("reslabel.job")


@dataclass(frozen=True)
class Dispatch:
    """How shards are handed out. ``read_options`` / ``actor_options``: Ray resource options (``num_cpus``,
    ``memory``, ``num_gpus``, ``resources``) of the read tasks and the segment actors."""

    num_actors: int  # actors started up front
    read_options: Dict[str, Any] = field(default_factory=dict)
    actor_options: Dict[str, Any] = field(default_factory=dict)
    depth: int = 2  # calls queued per actor: one running, one whose pixels are on their way
    read_ahead: int = 2  # finished or running read tasks not yet given to an actor
    init_deaths_allowed: int = 3  # consecutive actor constructor failures before the job fails
    progress_every_s: float = 30.0  # how often the driver logs progress
    poll_s: float = 1.0  # how often the driver looks at the actors' states when no result arrives
    min_actors: Optional[int] = None  # elastic pool: fewest actors kept (None: num_actors)
    max_actors: Optional[int] = None  # elastic pool: most actors (None: num_actors, a fixed pool)
    pending_warn_s: float = 30.0  # warn when an actor has waited this long for its node while others work
    shrink_after_s: float = 120.0  # elastic pool: let go of an actor (above min_actors) pending this long
    grow_every_s: float = 5.0  # elastic pool: how often the driver looks for room for one more actor

    @property
    def elastic(self) -> bool:
        return self.floor < self.ceiling

    @property
    def floor(self) -> int:
        return self.num_actors if self.min_actors is None else self.min_actors

    @property
    def ceiling(self) -> int:
        return self.num_actors if self.max_actors is None else max(self.max_actors, self.num_actors)


@dataclass(eq=False)
class _Slot:
    """One actor of the pool: the calls it holds (call ref → (shard, read ref)) and, while it is being restarted
    by Ray, the ref of the probe that says it is back (no work is given to it meanwhile)."""

    actor: Any
    calls: Dict[Any, Tuple[int, Any]] = field(default_factory=dict)
    probe: Any = None
    since: float = 0.0  # when the current probe was sent (how long the actor has been pending)


class Actors:
    """The pool's actors, created (and probed) when this is constructed: ``jobs.runner`` starts them while it
    still plans and prepares the text, so that the models load meanwhile; ``label_shards`` takes them over (and
    kills them when it ends). ``kill()`` ends actors that no shard will reach (a run that stopped before
    labeling). An actor's constructor arguments are ``actor_kwargs``; what it needs to know of the run comes with
    each call (``label_shards``'s ``context``)."""

    def __init__(self, actor_cls: type, actor_kwargs: Dict[str, Any], dispatch: Dispatch):
        import ray

        self.actor_class = ray.remote(actor_cls).options(max_restarts=-1, max_task_retries=0,
                                                         **dispatch.actor_options)
        self.actor_kwargs, self.dispatch = actor_kwargs, dispatch
        self.owner: Dict[Any, _Slot] = {}  # call or probe ref → its slot
        self.slots: List[_Slot] = [self.new_slot() for _ in range(dispatch.num_actors)]

    def new_slot(self) -> _Slot:
        slot = _Slot(self.actor_class.remote(**self.actor_kwargs))
        _probe(slot, self.owner)  # no work until it answers: a pending actor gets no shard
        return slot

    def new_actor(self):
        return self.actor_class.remote(**self.actor_kwargs)

    def kill(self) -> None:
        import ray

        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)
        self.slots = []


def label_shards(todo: Sequence[int], *, read_fn: Callable, read_kwargs: Dict[str, Any], actor_cls: type,
                 actor_kwargs: Dict[str, Any], dispatch: Dispatch, actors: Optional[Actors] = None,
                 context: Any = None) -> Iterator[Dict]:
    """Label the shards ``todo``; yields each shard's write result (the dicts ``actor_cls.label_block`` returns)
    once, as they arrive, in completion order. Raises the first error a call raises (see the module docstring).
    ``actor_cls`` has ``label_block(decoded[, context]) -> List[Dict]`` (one dict per shard, with ``shard`` and
    ``rows``) and ``ready() -> bool``. ``actors``: the pool started ahead (else it starts here); ``context``: a
    value (or object ref) passed with every call after the decoded images (None: not passed)."""
    import ray

    reader = ray.remote(_read).options(max_retries=-1, **dispatch.read_options)
    read_args = ray.put((read_fn, read_kwargs))  # pickled once, not per task (it was ~3 ms of driver CPU each)
    if actors is None:
        actors = Actors(actor_cls, actor_kwargs, dispatch)
    call_args = () if context is None else (ray.put(context),)  # put once: each call passes the ref
    owner, slots, new_slot = actors.owner, actors.slots, actors.new_slot
    for slot in slots:  # actors started ahead wait from now on: before, no actor had work to do
        if slot.probe is not None:
            slot.since = time.monotonic()
    pool = _Pool(dispatch)
    queue: Deque[int] = collections.deque(todo)
    waiting: Deque[Tuple[int, Any]] = collections.deque()  # (shard, read ref) not yet given to an actor
    seen: set = set()
    retry: Dict[_Slot, float] = {}  # slots whose probe failed → when to probe again
    init_deaths, rows, t0, last_log = 0, 0, time.monotonic(), time.monotonic()
    try:
        while len(seen) < len(todo):
            while queue and len(waiting) < dispatch.read_ahead:
                shard = queue.popleft()
                waiting.append((shard, reader.remote(shard, read_args)))
            _assign(slots, waiting, owner, dispatch.depth, call_args)
            now = time.monotonic()
            for slot in [s for s in retry if retry[s] <= now]:  # probe again those whose last probe failed
                del retry[slot]
                _probe(slot, owner, keep_since=True)
            for slot in slots:  # a restarting actor's calls would wait for it (for ever if its node is gone)
                if slot.probe is None and slot.calls and _restarting(slot.actor):
                    log.warning("a segment actor is restarting; its %d shard(s) go to the others", len(slot.calls))
                    _requeue(slot, owner, waiting)
                    _probe(slot, owner)
            pool.watch(slots, owner, retry, new_slot, now)
            wait_s = min([dispatch.poll_s] + [t - now for t in retry.values()])
            if not owner:  # every actor is between probes: nothing to wait on but the clock
                time.sleep(max(wait_s, 0.0))
                continue
            finished, _ = ray.wait(list(owner), num_returns=1, timeout=max(wait_s, 0.0))
            for ref in finished:
                slot = owner.pop(ref)
                if ref == slot.probe:
                    failed = _probed(slot, ref, retry)
                    if failed is not None:  # its constructor raised: a fresh actor, a bounded number of times
                        if init_deaths >= dispatch.init_deaths_allowed:
                            raise failed
                        init_deaths += 1
                        log.warning("a segment actor failed to start (%d of %d allowed); starting another: %s",
                                    init_deaths, dispatch.init_deaths_allowed, _last_line(failed))
                        ray.kill(slot.actor, no_restart=True)
                        slot.actor = actors.new_actor()
                        _probe(slot, owner)
                    continue
                if slot not in slots:  # let go of by the pool meanwhile: its shard went back to the queue
                    continue
                shard, read_ref = slot.calls.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    init_failed = getattr(e, "actor_init_failed", False)
                    if init_failed and init_deaths >= dispatch.init_deaths_allowed:
                        raise
                    init_deaths += init_failed
                    _requeue(slot, owner, waiting, (shard, read_ref))
                    if init_failed:
                        log.warning("a segment actor failed to start (%d of %d allowed); starting another: %s",
                                    init_deaths, dispatch.init_deaths_allowed, _last_line(e))
                        ray.kill(slot.actor, no_restart=True)
                        slot.actor = actors.new_actor()
                    else:
                        log.warning("a segment actor died (%s); its shards go to the others, Ray restarts it",
                                    _last_line(e))
                    _probe(slot, owner)
                    continue
                init_deaths = 0
                for r in results:
                    if r["shard"] not in seen:
                        seen.add(r["shard"])
                        rows += int(r["rows"])
                        yield r
            if time.monotonic() - last_log >= dispatch.progress_every_s:
                last_log = time.monotonic()
                states = actor_states([s.actor for s in slots])
                log.info("labeled %d of %d shards (%d images, %.1f images/s); actors: %s%s", len(seen), len(todo),
                         rows, rows / max(last_log - t0, 1e-9),
                         ", ".join(f"{n} {k}" for k, n in sorted(states.items())),
                         f" (pool {dispatch.floor}-{dispatch.ceiling})" if dispatch.elastic else "")
                if not seen and "ALIVE" not in states:
                    log.warning(waiting_hint(states, dispatch.actor_options))
                pool.warned = 0.0  # the pending warning, if due, comes again with every progress line
    finally:
        actors.kill()


class _Pool:
    """The pool's upkeep, once per loop turn: warn about actors pending while others work; in an elastic pool,
    grow by one actor when there is room and let go of actors (above the floor) pending too long."""

    def __init__(self, dispatch: Dispatch):
        from jobs import resources

        self.d = dispatch
        self.ask = resources.ray_ask(dispatch.actor_options)
        self.read_cpus = float(dispatch.read_options.get("num_cpus", resources.READ_CPUS) or 0.0)
        self.warned = 0.0  # when the pending warning was last logged (0: due as soon as it applies)
        self.next_grow = time.monotonic() + dispatch.grow_every_s
        self.blocked_at: Optional[int] = None  # alive nodes when growing last failed: retry when that changes

    def watch(self, slots: List[_Slot], owner: Dict[Any, _Slot], retry: Dict[_Slot, float],
              new_slot: Callable[[], _Slot], now: float) -> None:
        working = [s for s in slots if s.probe is None]
        pending = [s for s in slots if s.probe is not None]
        if not working:
            return
        late = [s for s in pending if now - s.since >= self.d.pending_warn_s]
        if late and (not self.warned or now - self.warned >= self.d.progress_every_s):
            self.warned = now
            log.warning(pending_warning(len(late), len(slots), len(working), now - min(s.since for s in late),
                                        self.d.actor_options))
        if not self.d.elastic:
            return
        for slot in [s for s in pending if now - s.since >= self.d.shrink_after_s]:
            if len(slots) <= self.d.floor:
                break
            self._let_go(slot, slots, owner, retry)
            log.warning("the pool shrinks to %d segment actor(s): one waited %.0f s for a node with %s",
                        len(slots), now - slot.since, _asked(self.d.actor_options))
        if pending or len(slots) >= self.d.ceiling or now < self.next_grow:
            return
        self.next_grow = now + self.d.grow_every_s
        from jobs import resources

        view = resources.ClusterView.of_running_ray()
        if self.blocked_at is not None and len(view.nodes) == self.blocked_at:
            return
        room = resources.room_for(view, self.ask, len(slots), self.read_cpus)
        if not room and view.autoscaler and view.node_types is None:
            room = "autoscaler?"  # node types unknown: one pending actor asks the autoscaler
        if room:
            slots.append(new_slot())
            log.info("the pool grows to %d segment actor(s) (%s)", len(slots),
                     "room on the alive nodes" if room == "now" else "a node the autoscaler can add")
            self.blocked_at = None

    def _let_go(self, slot: _Slot, slots: List[_Slot], owner: Dict[Any, _Slot], retry: Dict[_Slot, float]) -> None:
        import ray

        owner.pop(slot.probe, None)
        retry.pop(slot, None)
        slots.remove(slot)
        ray.kill(slot.actor, no_restart=True)
        self.blocked_at = sum(1 for n in ray.nodes() if n.get("Alive"))


def pending_warning(late: int, total: int, working: int, waited_s: float, actor_options: Dict[str, Any]) -> str:
    """The warning for actors not started while others work: what they ask, and what the cluster lacks (the
    pending demands of ``ray status``: actors waiting for a node show there; one still loading its model not)."""
    from jobs import resources

    asked = resources.ray_ask(actor_options)
    demands = resources.pending_demands()
    lacking = sum(n for shape, n in demands if all(shape.get(k) == v for k, v in asked.items()))
    return (f"{late} of {total} segment actor(s) have been pending for {waited_s:.0f} s while {working} work "
            f"({lacking} wait for a node, the others are starting); each asks for {resources.fmt(asked)}; the "
            f"cluster lacks (ray status, pending demands): {resources.describe_demands(demands)}. The run goes "
            f"on with the {working} working actor(s); the pending ones get no shard until they start")


def _asked(actor_options: Dict[str, Any]) -> str:
    from jobs import resources

    return resources.fmt(resources.ray_ask(actor_options))


def _read(shard: int, read_args: Tuple[Callable, Dict[str, Any]]):
    """Ray task: ``read_fn(shard, **read_kwargs)`` (the pair travels as one object, put once)."""
    read_fn, read_kwargs = read_args
    return read_fn(shard, **read_kwargs)


def _probe(slot: _Slot, owner: Dict[Any, _Slot], keep_since: bool = False) -> None:
    """Stop giving ``slot`` work until its actor answers ``ready`` (``_probed`` handles the answer)."""
    slot.probe = slot.actor.ready.remote()
    if not keep_since:
        slot.since = time.monotonic()
    owner[slot.probe] = slot


def _probed(slot: _Slot, ref, retry: Dict[_Slot, float]) -> Optional[BaseException]:
    """A probe finished: the actor is up (it gets work), or it is still unreachable (a restart not done yet;
    probe again in a second). Returns the error of an actor whose constructor raised (the caller replaces it)."""
    import ray

    try:
        ray.get(ref)
        slot.probe = None
    except ray.exceptions.RayActorError as e:
        if getattr(e, "actor_init_failed", False):
            slot.probe = None
            return e
        retry[slot] = time.monotonic() + 1.0
    return None


def _last_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1][:300] if lines else type(e).__name__


def _assign(slots: List[_Slot], waiting: Deque[Tuple[int, Any]], owner: Dict[Any, _Slot], depth: int,
            call_args: Tuple = ()) -> None:
    """Give waiting read results to the least-loaded working actors, finished reads first (an unfinished one is
    handed out when nothing is finished: the actor call waits for it)."""
    import ray

    while waiting:
        working = [s for s in slots if s.probe is None]
        slot = min(working, key=lambda s: len(s.calls), default=None)
        if slot is None or len(slot.calls) >= depth:
            return
        refs = [r for _, r in waiting]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)[0])
        pick = next((i for i, r in enumerate(refs) if r in ready), 0)
        shard, read_ref = waiting[pick]
        del waiting[pick]
        call = slot.actor.label_block.remote(read_ref, *call_args)
        slot.calls[call] = (shard, read_ref)
        owner[call] = slot


def _requeue(slot: _Slot, owner: Dict[Any, _Slot], waiting: Deque[Tuple[int, Any]],
             failed: Optional[Tuple[int, Any]] = None) -> None:
    """The shards of a dead actor's calls (the failed one and any it still held) go back to the front of
    ``waiting``; their calls are forgotten (should one still run after a restart, its part is already there or
    is written once, and its result is not waited for)."""
    import ray

    for ref, pending in list(slot.calls.items()):
        owner.pop(ref, None)
        waiting.appendleft(pending)
        try:
            ray.cancel(ref)  # best effort: a call still queued for the restarted actor need not run
        except Exception:  # noqa: BLE001 - a finished or unknown call: nothing to cancel
            pass
    slot.calls.clear()
    if failed is not None:
        waiting.appendleft(failed)


def _restarting(actor) -> bool:
    """Whether Ray is restarting ``actor`` (its process or node died), from this process's own view of the
    actor's state: no RPC. The same private accessor Ray Data's actor pool reads; False if it is missing."""
    try:
        from ray.core.generated import gcs_pb2

        return actor._get_local_state() == gcs_pb2.ActorTableData.ActorState.RESTARTING
    except (AttributeError, ImportError):
        return False


def actor_states(actors: Sequence[Any]) -> Dict[str, int]:
    """How many of ``actors`` are in each Ray actor state (``ALIVE``, ``PENDING_CREATION``, ``RESTARTING``, ...),
    from this process's local view (no RPC); ``UNKNOWN`` where Ray does not say."""
    try:
        from ray.core.generated import gcs_pb2

        names = gcs_pb2.ActorTableData.ActorState.Name
    except (AttributeError, ImportError):
        return {"UNKNOWN": len(actors)}
    out: Dict[str, int] = collections.Counter()
    for a in actors:
        state = getattr(a, "_get_local_state", lambda: None)()
        out[names(state) if state is not None else "UNKNOWN"] += 1
    return dict(out)


def waiting_hint(states: Dict[str, int], actor_options: Dict[str, Any]) -> str:
    """The warning for a run whose segment actors have not started: what they wait for and what they ask."""
    from jobs import resources

    asked = ", ".join(f"{k}={v}" for k, v in sorted(actor_options.items())) or "no resources"
    return (f"no segment actor has started yet ({', '.join(f'{n} {k}' for k, n in sorted(states.items()))}); "
            f"each asks for {asked}: check that the cluster's nodes offer that (ray status; pending demands: "
            f"{resources.describe_demands(resources.pending_demands())}), or that the model is still loading")


def free_cpus(reserved: float) -> Optional[int]:
    """CPUs of the running Ray cluster left after ``reserved`` (the actors'), or None when Ray does not say."""
    import ray

    total = ray.cluster_resources().get("CPU")
    return None if total is None else max(0, int(total - reserved))
