"""What the segment actors and the read tasks ask of the cluster, and what the cluster has or can add.

The job checks this before any work (``check_budget``, from ``jobs.runner``) and while it labels (the elastic pool
in ``jobs.dispatch`` asks ``ClusterView.room_for`` before it adds an actor, and ``pending_demands`` names what the
cluster lacks when actors wait).

The CPU budget of the reads: a read task asks for ``READ_CPUS`` CPU (``jobs.runner``); the actors must leave at
least that much on the cluster's nodes, or the reads wait for ever behind actors that wait for their pixels (a
silent deadlock: two 1-CPU actors on a 2-CPU machine). The job therefore

* refuses up front (``BudgetError``: the CLI's one ``error:`` line, exit 2) when the actors the run must start
  (``--num-actors N``, or MIN of ``MIN-MAX``), placed on the alive nodes, would leave less than ``READ_CPUS`` and
  nothing can add a CPU (no autoscaler node type with CPUs and room below its ``max_workers``);
* in an elastic pool, adds an actor beyond MIN only when it fits next to that budget on the alive nodes, or when
  a node type of the autoscaler can host it (it waits as the autoscaler's demand, and its node brings CPUs);
* caps the reads in flight at the CPUs the actors leave (``read_cpus_left``), at least ``2 x actors``.

What the cluster has: the alive nodes' total resources (``ray.nodes()``). What it can add: the autoscaler's
node types, read from the autoscaling config file the head's autoscaler (``monitor.py --autoscaling-config``,
the cluster launcher's ``~/ray_bootstrap_config.yaml``, a fake multi-node cluster's file) was started with,
when this process can see that process (the driver of ``ray job submit`` runs on the head), with the
counts of each type from the autoscaler's status in the GCS (``__autoscaling_status``). When an autoscaler
runs but its node types cannot be read (e.g. KubeRay's autoscaler in its own container), the job does not
refuse: whatever could still be added is unknown, and the warnings while labeling name what is missing.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from pipeline.config import ConfigError

log = logging.getLogger("reslabel.job")
READ_CPUS = 1.0  # num_cpus of one read task (fetch with threads, decode, resize): the reads' reserved budget
_IGNORED = ("memory", "object_store_memory")  # asked by the reads only as a soft guide here; placement checks
# CPU, GPU and custom resources (node:<ip> markers never appear in an ask)


class BudgetError(ConfigError):
    """The actors cannot run next to their reads on this cluster, and nothing can add what is missing."""


@dataclass(frozen=True)
class NodeType:
    """An autoscaler node type: the resources of one node, how many it may run, how many it runs or launches."""

    name: str
    resources: Dict[str, float]
    max_workers: int
    count: int = 0

    @property
    def can_add(self) -> bool:
        return self.count < self.max_workers


@dataclass(frozen=True)
class ClusterView:
    """The alive nodes' total resources, and the autoscaler's node types (``None``: not known)."""

    nodes: List[Dict[str, float]]
    autoscaler: bool = False  # an autoscaler reports its status to the GCS
    node_types: Optional[List[NodeType]] = None
    source: str = ""  # where the node types came from (for messages)

    @classmethod
    def of_running_ray(cls) -> "ClusterView":
        import ray

        nodes = [{k: float(v) for k, v in (n.get("Resources") or {}).items() if not k.startswith("node:")}
                 for n in ray.nodes() if n.get("Alive")]
        status = _autoscaler_status()
        report = (status or {}).get("autoscaler_report") or None
        types, source = None, ""
        if report is not None:
            found = _autoscaling_config(ray.get_runtime_context().gcs_address)
            if found == "readonly":  # a monitor without a config: a fixed cluster (ray.init, plain ray start)
                return cls(nodes, source="no autoscaling config")
            if found is not None:
                config, source = found
                types = node_types(config, report)
        elif _autoscaler_v2():  # v2 reports elsewhere: an autoscaler runs, what it may add is not read here
            return cls(nodes, autoscaler=True, source="autoscaler v2")
        return cls(nodes, autoscaler=report is not None, node_types=types, source=source)

    @property
    def cpus(self) -> float:
        return sum(n.get("CPU", 0.0) for n in self.nodes)

    def placeable(self, ask: Dict[str, float], limit: int) -> int:
        """How many actors asking ``ask`` the alive nodes hold (at most ``limit``), each node on its own."""
        return min(limit, sum(fits(n, ask) for n in self.nodes))

    def within_budget(self, ask: Dict[str, float], limit: int, read_cpus: float = READ_CPUS) -> int:
        """How many actors the alive nodes hold while ``read_cpus`` CPUs stay free for the reads."""
        k = self.placeable(ask, limit)
        cpu = ask.get("CPU", 0.0)
        if cpu > 0:
            k = min(k, max(0, math.floor((self.cpus - read_cpus) / cpu + 1e-9)))
        return k

    def adders(self, ask: Dict[str, float]) -> Optional[List[NodeType]]:
        """Node types the autoscaler may still add that hold one such ``ask``; None when not known."""
        if not self.autoscaler:
            return []
        if self.node_types is None:
            return None
        return [t for t in self.node_types if t.can_add and fits(t.resources, ask) >= 1]

    def describe(self) -> str:
        total: Dict[str, float] = {}
        for n in self.nodes:
            for k, v in n.items():
                if k not in _IGNORED:
                    total[k] = total.get(k, 0.0) + v
        what = f"{len(self.nodes)} alive node(s) with {fmt(total)}"
        if not self.autoscaler:
            return what + "; no autoscaler"
        if self.node_types is None:
            return what + "; an autoscaler whose node types this driver cannot read"
        types = ", ".join(f"{t.name} {fmt(t.resources)} ({t.count} of max {t.max_workers})" for t in self.node_types)
        return what + f"; autoscaler node types: {types or 'none'}"


def fits(node: Dict[str, float], ask: Dict[str, float]) -> int:
    """How many times ``ask`` fits in ``node`` (resource totals); a large number when ``ask`` asks for nothing."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in ask.items() if v > 0 and k not in _IGNORED]
    return min(counts) if counts else 1 << 20


def ray_ask(options: Dict[str, Any]) -> Dict[str, float]:
    """Ray ``.options()`` (``num_cpus``, ``num_gpus``, ``resources``, ``memory``) → resource names and amounts."""
    ask = {"CPU": float(options.get("num_cpus", 1.0) or 0.0)}
    if options.get("num_gpus"):
        ask["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        ask["memory"] = float(options["memory"])
    for k, v in (options.get("resources") or {}).items():
        ask[k] = float(v)
    return {k: v for k, v in ask.items() if v > 0}


def fmt(resources: Dict[str, float]) -> str:
    shown = {k: (int(v) if float(v).is_integer() else round(v, 3)) for k, v in sorted(resources.items())
             if k not in _IGNORED}
    return "{" + ", ".join(f"{k}: {v}" for k, v in shown.items()) + "}"


@dataclass(frozen=True)
class PoolPlan:
    """The pool a run starts: ``start`` actors now (MIN at least), growing up to ``max_actors``."""

    min_actors: int
    max_actors: int
    start: int
    read_cpus_left: float  # CPUs the started actors leave to the reads on the alive nodes
    notes: List[str] = field(default_factory=list)


def check_budget(view: ClusterView, actor_ask: Dict[str, float], min_actors: int, max_actors: int,
                 read_cpus: float = READ_CPUS, flags: str = "") -> PoolPlan:
    """The pool to start, or ``BudgetError`` when the actors would leave no CPU for the reads (or could not be
    placed at all) and nothing can add what is missing. ``flags`` names the options in messages."""
    cpu = actor_ask.get("CPU", 0.0)
    adders = view.adders(actor_ask)
    cpu_types = None if view.node_types is None and view.autoscaler else [
        t for t in (view.node_types or []) if t.can_add and t.resources.get("CPU", 0.0) >= read_cpus]
    can_add_cpu = cpu_types is None or bool(cpu_types)
    placeable = view.placeable(actor_ask, min_actors)
    budget = view.within_budget(actor_ask, max_actors, read_cpus)
    where = view.describe()
    if view.cpus < read_cpus and not can_add_cpu:
        raise BudgetError(f"the cluster has {view.cpus:g} CPU(s) and nothing can add one: the read tasks (each "
                          f"asks for {read_cpus:g} CPU) cannot run ({where})")
    if placeable == 0 and adders == []:
        raise BudgetError(f"no node offers what a segment actor asks ({fmt(actor_ask)}) and no autoscaler node "
                          f"type can add one ({where}); check {flags or '--actor-resources/--gpus-per-actor'}")
    left = view.cpus - placeable * cpu
    if left < read_cpus and not can_add_cpu:
        fit = view.within_budget(actor_ask, min_actors, read_cpus)
        hint = (f"use --num-actors {fit} (or a range {fit}-{max_actors}) or fewer --cpus-per-actor" if fit else
                "use fewer --cpus-per-actor")
        raise BudgetError(f"{flags or f'{min_actors} actor(s)'}: {placeable} segment actor(s) of {fmt(actor_ask)} "
                          f"would take {placeable * cpu:g} of the cluster's {view.cpus:g} CPUs and leave "
                          f"{max(left, 0):g} for the read tasks, which need {read_cpus:g} each; nothing can add a "
                          f"CPU ({where}): {hint}")
    start = min_actors if min_actors == max_actors else max(min_actors, min(max_actors, budget))
    notes = []
    if min_actors > placeable:
        notes.append(f"{min_actors - placeable} of {min_actors} segment actor(s) cannot be placed on the alive nodes "
                     f"now ({where}); the run starts with those that can")
    return PoolPlan(min_actors, max_actors, start, max(0.0, view.cpus - min(start, placeable) * cpu), notes)


def room_for(view: ClusterView, actor_ask: Dict[str, float], actors: int, read_cpus: float = READ_CPUS) -> str:
    """Whether one more actor (beyond ``actors``) can be added: ``"now"`` (it fits on the alive nodes next to the
    reads' budget), ``"autoscaler"`` (a node type the autoscaler can still add holds it), or ``""``."""
    if view.within_budget(actor_ask, actors + 1, read_cpus) > actors:
        return "now"
    adders = view.adders(actor_ask)
    return "autoscaler" if adders else ""


def room_beside(view: ClusterView, actor_ask: Dict[str, float], actors: int) -> bool:
    """Whether the alive nodes hold ``actors`` actors and one more task of the same size together, the reads'
    CPU budget set aside (the reads may wait for that task: it ends by itself). ``jobs.runner`` starts its
    actors beside the prepare task only then, so that its own actors never keep that task from being placed."""
    return view.within_budget(actor_ask, actors + 1, read_cpus=0.0) > actors


def pending_demands() -> List[Tuple[Dict[str, float], int]]:
    """What the cluster lacks, as ``ray status`` shows it ("Pending Demands"): the resource shapes of tasks and
    actors waiting for a node, and how many of each (GCS ``cluster_resource_state``); [] when not available."""
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_resource_state

        state = get_cluster_resource_state(ray._private.worker.global_worker.gcs_client)
        return [({k: float(v) for k, v in r.request.resources_bundle.items()}, int(r.count))
                for r in state.pending_resource_requests]
    except Exception as e:  # noqa: BLE001 - a private API: the warning goes on without it
        log.debug("pending demands not available: %s", e)
        return []


def describe_demands(demands: List[Tuple[Dict[str, float], int]]) -> str:
    if not demands:
        return "none reported"
    return "; ".join(f"{fmt(shape)} x{n}" for shape, n in demands)


def _autoscaler_status() -> Optional[Dict]:
    """The autoscaler's status (``ray status``'s source) from the GCS, or None when no autoscaler reports."""
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return json.loads(raw) if raw else None
    except Exception as e:  # noqa: BLE001 - a private key: unknown means no autoscaler seen
        log.debug("autoscaler status not available: %s", e)
        return None


def _autoscaler_v2() -> bool:
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return bool(is_autoscaler_v2(fetch_from_server=True))
    except Exception as e:  # noqa: BLE001 - a private API: unknown means not v2
        log.debug("autoscaler v2 flag not available: %s", e)
        return False


def _autoscaling_config(gcs_address: str) -> Any:
    """The autoscaling config of this cluster's autoscaler: ``$RESLABEL_AUTOSCALING_CONFIG``, else the file named by
    the ``--autoscaling-config`` of a ``monitor.py`` of this GCS that this process can see; ``"readonly"`` when
    that monitor runs without one (it only reports; nothing adds nodes); None when not known."""
    path = os.environ.get("RESLABEL_AUTOSCALING_CONFIG")
    if not path:
        path = _monitor_config_path(gcs_address)
    if not path or path == "readonly":
        return path or None
    try:
        import yaml

        with open(os.path.expanduser(path)) as f:
            return yaml.safe_load(f), path
    except (OSError, ValueError, ImportError) as e:
        log.debug("autoscaling config %s not readable: %s", path, e)
        return None


_MONITORS: Dict[str, Optional[str]] = {}  # GCS address → what its monitor's command line says (found once)


def _monitor_config_path(gcs_address: str) -> Optional[str]:
    """``--autoscaling-config`` of the ``monitor.py`` of this GCS (``"readonly"`` without one), from /proc."""
    if gcs_address not in _MONITORS or _MONITORS[gcs_address] is None:
        _MONITORS[gcs_address] = _scan_monitors(gcs_address)
    return _MONITORS[gcs_address]


def _scan_monitors(gcs_address: str) -> Optional[str]:
    port = gcs_address.rsplit(":", 1)[-1]
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith("monitor.py") for a in args):
            continue
        opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if opts.get("gcs-address", "").rsplit(":", 1)[-1] == port:
            return opts.get("autoscaling-config") or "readonly"
    return None


def node_types(config: Dict, report: Dict) -> List[NodeType]:
    """Worker node types of an autoscaling ``config`` with their counts from the autoscaler's ``report``
    (active, pending and launching nodes of each type)."""
    head = config.get("head_node_type")
    counts: Dict[str, int] = {}
    for name, n in (report.get("active_nodes") or {}).items():
        counts[name] = counts.get(name, 0) + int(n)
    for name, n in (report.get("pending_launches") or {}).items():
        counts[name] = counts.get(name, 0) + int(n)
    for entry in report.get("pending_nodes") or []:
        if len(entry) > 1:
            counts[entry[1]] = counts.get(entry[1], 0) + 1
    out = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        out.append(NodeType(name, resources, int(spec.get("max_workers", config.get("max_workers", 0)) or 0),
                            counts.get(name, 0)))
    return out
