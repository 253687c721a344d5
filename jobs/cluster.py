"""Where the job runs, and which local paths are safe there (checked before any work).

The driver lists the inputs, but read tasks, the segment actors and the prepare task run on any node of the
cluster. A local path is therefore safe only where every process that touches it sees the same file:

* Under ``ray job submit`` the driver's working directory is Ray's temporary copy of ``--working-dir``
  (``.../runtime_resources/working_dir_files/_ray_pkg_<hash>``), which Ray deletes after the job. A relative
  ``--output`` would vanish with it, and a relative ``--input`` would put that session path into every row's
  ``source_uri`` and ``image_id`` (a new id for every image at every submission). Relative ``--input``,
  ``--output``, ``--weights`` and ``--text-cache`` are refused there.
* On a cluster of several nodes (or one whose driver node has no CPUs, so every task runs elsewhere), a local
  absolute path of those four options is refused unless ``--shared-fs`` says every node mounts it at the
  same path. Object-store URIs (``s3://``) work everywhere.
* Vocabulary, templates and a model JSON config are small: the driver reads them once and ships their
  content to every task and actor, so any path the driver can read works, including a relative path inside
  ``--working-dir``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import List, Optional, Tuple

from jobs import storage
from pipeline.config import ConfigError

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in the entrypoint's environment
PATH_OPTIONS = ("input", "output", "weights", "text_cache")  # read or written by tasks on any node
SHARED = "an s3:// URI, or an absolute path on a filesystem that every node mounts at that path (with --shared-fs)"


@dataclasses.dataclass(frozen=True)
class Submission:
    """What ``ray job submit`` told the entrypoint: whether it runs as a job, and its working-dir package."""

    under_job: bool
    working_dir: Optional[str] = None  # e.g. "gcs://_ray_pkg_<hash>.zip"

    @classmethod
    def from_env(cls) -> "Submission":
        raw = os.environ.get(JOB_ENV)
        if not raw:
            return cls(False)
        try:
            env = json.loads(raw).get("runtime_env") or {}
        except (ValueError, AttributeError):
            env = {}
        return cls(True, env.get("working_dir"))


@dataclasses.dataclass(frozen=True)
class Placement:
    """The cluster as the driver sees it after connecting."""

    alive_nodes: int
    driver_node_cpus: float
    client_mode: bool = False  # ray:// : the driver is not on a cluster node at all

    @property
    def multi_node(self) -> bool:
        return self.alive_nodes > 1 or self.driver_node_cpus <= 0 or self.client_mode

    def reason(self) -> str:
        if self.client_mode:
            return "the driver connects through Ray Client, outside the cluster"
        if self.alive_nodes > 1:
            return f"{self.alive_nodes} alive nodes; tasks and actors run on any of them"
        return "the driver's node has no CPUs, so every task runs on another node"

    @classmethod
    def of_running_ray(cls) -> "Placement":
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        own = ray.get_runtime_context().get_node_id()
        cpus = next((float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes if n.get("NodeID") == own), 0.0)
        return cls(len(nodes), cpus, client_mode=ray.util.client.ray.is_connected())


def _local_paths(values: List[Tuple[str, Optional[str]]]) -> List[Tuple[str, str]]:
    return [(name, v) for name, v in values if v and not storage.is_remote(v)]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_relative(values: List[Tuple[str, Optional[str]]], submission: Submission, cwd: str) -> None:
    """Refuse relative local paths of task-read/written options under ``ray job submit``."""
    if not submission.under_job:
        return
    for name, v in _local_paths(values):
        path = v[len("file://"):] if v.startswith("file://") else v
        if not os.path.isabs(os.path.expanduser(path)):
            why = ("its image ids and source URIs would name Ray's temporary copy of --working-dir, so every "
                   "submission would label everything again" if name == "input" else
                   "Ray deletes that copy after the job, and what was written there is lost")
            raise ConfigError(f"{_flag(name)} {v!r} is a relative path: under `ray job submit` it resolves inside "
                              f"Ray's temporary copy of --working-dir ({cwd}) and {why}. Use {SHARED}.")


def check_local(values: List[Tuple[str, Optional[str]]], placement: Placement, shared_fs: bool) -> None:
    """Refuse local paths of task-read/written options on a multi-node cluster unless ``shared_fs``."""
    if shared_fs or not placement.multi_node:
        return
    local = _local_paths(values)
    if local:
        named = ", ".join(f"{_flag(n)} {v}" for n, v in local)
        raise ConfigError(f"local path(s) {named} on a multi-node Ray cluster ({placement.reason()}): a path that "
                          f"exists only on this node would fail on the others. Use {SHARED}.")
