"""GPU actors without a GPU: the device rule (auto = the GPUs Ray assigned, else CPU; a real local Ray told it has
one GPU assigns it to tasks/actors that ask, fractional included), the fault classes, and the actor's fault paths
injected in real jobs through ``RESLABEL_TEST_FAULT`` (jobs/devices.py): CUDA out of memory halves the batch down
to one image; a sticky CUDA error ends the actor, Ray restarts it, its shards are requeued, every image exactly once.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from jobs.config import LabelJobConfig
from jobs.devices import fault_kind, injected_fault, summarize_devices, worker_device
from pipeline.config import ConfigError, SegmenterConfig, crops_per_forward_for
from tests.crash_helpers import committed_names, finish, launch, write_images

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_worker_device_rule():
    assert worker_device("auto", []) == "cpu"  # a CPU actor on a GPU node stays off the GPUs
    assert worker_device("auto", [0]) == "cuda"
    assert worker_device("auto", ["1"]) == "cuda"  # Ray's CUDA_VISIBLE_DEVICES makes it cuda:0
    assert worker_device("cpu", [0]) == "cpu"
    assert worker_device("cuda", [0]) == "cuda"


def test_cuda_needs_gpus_per_actor_and_fractions_are_fine(tmp_path):
    base = dict(input=str(tmp_path), output=str(tmp_path / "o"), random_weights=True, preset="voc21")
    with pytest.raises(ConfigError, match="--device cuda needs --gpus-per-actor > 0"):
        LabelJobConfig(device="cuda", **base).validate()
    LabelJobConfig(device="cuda", gpus_per_actor=0.5, **base).validate()
    LabelJobConfig(gpus_per_actor=0.25, **base).validate()


def test_device_sized_batches():
    cfg = SegmenterConfig()
    assert crops_per_forward_for(cfg, "cpu") == 8 and crops_per_forward_for(cfg, "cuda") == 32
    assert crops_per_forward_for(SegmenterConfig(crops_per_forward=3), "cuda") == 3
    assert SegmenterConfig(crops_per_forward=3).label_hash() == cfg.label_hash()


def test_fault_classes(tmp_path, monkeypatch):
    assert fault_kind(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == "oom"
    assert fault_kind(RuntimeError("CUDA error: an illegal memory access was encountered")) == "sticky"
    assert fault_kind(RuntimeError("CUDA error: device-side assert triggered")) == "sticky"
    assert fault_kind(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert fault_kind(ValueError("bad image")) is None
    monkeypatch.setenv("RESLABEL_TEST_FAULT", "oom:2")
    assert injected_fault(2) is None and isinstance(injected_fault(3), torch.cuda.OutOfMemoryError)
    marker = tmp_path / "sticky"
    monkeypatch.setenv("RESLABEL_TEST_FAULT", f"sticky:{marker}")
    assert fault_kind(injected_fault(1)) == "sticky" and marker.exists()
    assert injected_fault(1) is None  # once per marker: a restarted actor labels normally


def test_summarize_devices():
    cpu = dict(kind="cpu", name="cpu", gpu_ids=[], actor="a1")
    gpu = dict(kind="cuda", name="NVIDIA H100", gpu_ids=["0"], actor="a2")
    assert summarize_devices([cpu, cpu, gpu, None]) == dict(
        kinds={"cpu": 2, "cuda": 1, "unknown": 1}, actors={"a1": "cpu (cpu)", "a2": "cuda (NVIDIA H100) gpu 0"})


RAY_RULE = textwrap.dedent("""
    import json, ray
    from jobs.devices import ray_worker_device
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    f = ray.remote(lambda: (ray_worker_device("auto"), ray.get_gpu_ids()))

    @ray.remote
    class A:
        def device(self):
            return ray_worker_device("auto"), ray.get_gpu_ids()

    out = dict(task0=ray.get(f.options(num_gpus=0).remote()), task_half=ray.get(f.options(num_gpus=0.5).remote()),
               actors=ray.get([a.device.remote() for a in [A.options(num_gpus=0.5).remote() for _ in range(2)]]),
               actor0=ray.get(A.options(num_gpus=0).remote().device.remote()))
    ray.shutdown()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.job  # starts Ray (a job or a driver) in a subprocess
def test_ray_assigned_gpus_decide_auto():
    """A real local Ray that believes it has one GPU: tasks/actors asking for none get the CPU, those asking for
    0.5 get GPU 0 (two actors share it)."""
    proc = subprocess.run([sys.executable, "-c", RAY_RULE], cwd=REPO, capture_output=True, text=True, timeout=280,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(line[0][7:])
    assert out["task0"][0] == "cpu" and out["actor0"][0] == "cpu"
    assert out["task_half"][0] == "cuda"
    assert [a[0] for a in out["actors"]] == ["cuda", "cuda"]
    assert all(len(a[1]) == 1 for a in out["actors"])


def _job(tmp_path: pathlib.Path, model_args, fault: str, monkeypatch, n: int = 8, rc_expected: int = 0):
    names = write_images(tmp_path / "in", n, seed=4)
    monkeypatch.setenv("RESLABEL_TEST_FAULT", fault)
    log = tmp_path / "job.log"
    rc = finish(launch(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *model_args,
                        "--run-id", "fault-run"], log), timeout=600)
    text = log.read_text(errors="replace")
    assert rc == rc_expected, text[-4000:]
    success = json.loads((tmp_path / "out" / "runs" / "fault-run" / "_SUCCESS.json").read_text())
    assert committed_names(str(tmp_path / "out")) == collections.Counter(names)  # every image exactly once
    return success, text


@pytest.mark.job  # starts Ray (a job or a driver) in a subprocess
def test_oom_halves_the_batch_down_to_one_image(tmp_path, model_args, monkeypatch):
    success, log = _job(tmp_path, model_args, "oom:1", monkeypatch)  # calls of 4 images OOM, of 1 image do not
    assert success["by_status"] == {"ok": 8}
    assert "CUDA out of memory on 4 images; retrying as 2 + 2" in log
    assert "CUDA out of memory on 2 images; retrying as 1 + 1" in log
    assert success["attempt"]["devices"]["kinds"] == {"cpu": 2}  # two shards of 4, both on a CPU actor


@pytest.mark.job  # starts Ray (a job or a driver) in a subprocess
def test_oom_alone_is_an_inference_error(tmp_path, model_args, monkeypatch):
    # every image fails: committed as rows, and the job ends failed (exit 3, "no image was labeled")
    success, _ = _job(tmp_path, model_args, "oom:0", monkeypatch, n=4, rc_expected=3)
    assert success["by_status"] == {"inference_error": 4}
    assert "OutOfMemoryError" in success["top_errors"][0]["message"]


@pytest.mark.job  # starts Ray (a job or a driver) in a subprocess
def test_sticky_cuda_error_restarts_the_actor(tmp_path, model_args, monkeypatch):
    marker = tmp_path / "sticky-fired"
    success, log = _job(tmp_path, model_args, f"sticky:{marker}", monkeypatch)
    assert marker.exists()  # the fault fired once
    assert "sticky CUDA error, exiting so that Ray restarts it" in log
    assert success["by_status"] == {"ok": 8}  # requeued and relabelled by the restarted actor, none lost
