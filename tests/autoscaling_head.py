"""A real autoscaling Ray cluster on this machine, for the elastic-pool tests: Ray's fake multi-node provider
(``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...``): the head's autoscaler launches worker
"nodes" (real raylets on this machine) of a node type carrying a custom resource, min 0 / max ``max_workers``.
Free ports, its own short ``--temp-dir``, token authentication as ``tests.ray_head``; stopped by pid (SIGKILL
to the ``ray start`` process group and every descendant, the launched workers included; never ``ray stop``).
``ray.cluster_utils.AutoscalingCluster`` is not used: it needs ``fake_multi_node/example.yaml``, missing from
the 2.60 wheel, and calls ``ray stop``.
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

from tests.crash_helpers import REPO
from tests.ray_head import VENV_BIN, free_port, kill_head


def fake_cluster_config(gcs_address: str, head_cpus: int, worker_type: str, worker_resources: Dict[str, float],
                        max_workers: int) -> Dict:
    """The autoscaler config: a head of ``head_cpus`` CPUs (no custom resource) and one worker type."""
    return {
        "cluster_name": "reslabel-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            worker_type: {"resources": dict(worker_resources), "node_config": {}, "min_workers": 0,
                          "max_workers": max_workers},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class AutoscalingHead:
    """A fake autoscaling cluster: head (``head_cpus`` CPUs) + worker type ``worker_type`` (0..max_workers)."""

    def __init__(self, worker_resources: Dict[str, float], worker_type: str = "labeler", max_workers: int = 2,
                 head_cpus: int = 2):
        import ray._private.services as services

        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="ah", dir="/tmp"))  # socket paths stay short
        token = self.tmp / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.port = free_port()
        self.address = f"{services.get_node_ip_address()}:{self.port}"
        self.config = fake_cluster_config(self.address, head_cpus, worker_type, worker_resources, max_workers)
        (self.tmp / "autoscaling.json").write_text(json.dumps(self.config))
        self.env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
                    "RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "PYTHONUNBUFFERED": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.head_cpus = head_cpus
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 300) -> "AutoscalingHead":
        cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", "--port", str(self.port),
               f"--autoscaling-config={self.tmp / 'autoscaling.json'}", "--num-cpus", str(self.head_cpus),
               "--include-dashboard", "false", "--dashboard-agent-listen-port", str(free_port()),
               "--ray-client-server-port", str(free_port()), "--metrics-export-port", str(free_port()),
               "--temp-dir", str(self.tmp / "ray")]
        log = open(self.tmp / "head.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env, start_new_session=True,
                                     cwd=REPO)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("ray start exited:\n" + (self.tmp / "head.log").read_text()[-3000:])
            try:
                if self.python("import ray; ray.init(address='%s'); print(len(ray.nodes()))" % self.address,
                               timeout=180).returncode == 0:
                    return self
            except subprocess.TimeoutExpired:  # a loaded machine: the head is still starting
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError("the autoscaling head did not come up:\n" + (self.tmp / "head.log").read_text()[-3000:])

    def python(self, code: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run([os.path.join(VENV_BIN, "python"), "-c", code], timeout=timeout)

    def run(self, cmd: List[str], timeout: float = 600) -> subprocess.CompletedProcess:
        """A command in the repository root with the cluster's client environment (``RAY_ADDRESS`` set)."""
        env = {**self.env, "RAY_ADDRESS": self.address, "PYTHONPATH": str(REPO)}
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    def monitor_log(self) -> str:
        logs = sorted((self.tmp / "ray").glob("session_*/logs/monitor.*"))
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in logs)

    def stop(self) -> None:
        kill_head(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def wait_for_autoscaler(self, timeout: float = 120) -> None:
        """Until the autoscaler has reported its status to the GCS once (what the job reads of it)."""
        code = ("import json, ray\nfrom ray.experimental.internal_kv import _internal_kv_get\nray.init()\n"
                "s = _internal_kv_get('__autoscaling_status')\n"
                "print('ready' if s and json.loads(s).get('autoscaler_report') else 'not yet')")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "ready" in self.python(code, timeout=120).stdout.split():
                return
            time.sleep(2.0)
        raise RuntimeError("the autoscaler reported no status:\n" + self.monitor_log()[-3000:])
