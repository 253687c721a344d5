"""Which device a Ray worker may use, and what it reports (docs/job.md, "Devices").

Ray (2.x) no longer hides GPUs from actors and tasks that asked for none: torch in a ``--gpus-per-actor 0``
actor on a GPU node still sees every GPU, so ``torch.cuda.is_available()`` says nothing about what Ray *gave* the
process. The rule here: in a Ray worker, ``--device auto`` means the GPUs Ray assigned (``ray.get_gpu_ids()``,
fractional ``--gpus-per-actor`` included: several actors then share one GPU), else the CPU. The prepare task follows
the same rule, so it encodes the text on a GPU only when it asked for one. ``pipeline/`` never imports Ray: the
decision is made here and handed to ``ModelConfig.device``.

The faults of a GPU actor are classified here too (:func:`fault_kind`): CUDA out of memory (the actor retries with
smaller batches) versus a *sticky* CUDA error (illegal address, device-side assert, launch failure...: the CUDA
context is poisoned for the life of the process, so the actor exits and Ray restarts it; its shards are requeued).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

# Test hook: RESLABEL_TEST_FAULT, read in the segment actor (jobs/stages.py). "oom:N": every segmenter call on more
# than N images raises torch.cuda.OutOfMemoryError; "sticky:PATH": the first call in any actor raises a sticky CUDA
# error unless PATH exists (it is created first, so a restarted actor labels normally). Tests only.
FAULT_ENV = "RESLABEL_TEST_FAULT"

# Messages of CUDA errors after which the CUDA context cannot be used again in this process (CUDA runtime/driver
# error strings as torch reports them: "CUDA error: an illegal memory access was encountered", ...).
STICKY_MARKERS = ("illegal memory access", "device-side assert", "unspecified launch failure", "misaligned address",
                  "illegal instruction", "cudaErrorLaunchFailure", "CUDA error: unknown error",
                  "uncorrectable ECC error", "CUBLAS_STATUS_EXECUTION_FAILED", "CUDNN_STATUS_EXECUTION_FAILED",
                  "CUDA driver error", "device not ready", "GPU is lost")


def worker_device(requested: str, gpu_ids: Sequence) -> str:
    """The device string for ``ModelConfig.device`` in a Ray worker that Ray assigned ``gpu_ids``.

    ``auto`` → ``cuda`` (Ray's ``CUDA_VISIBLE_DEVICES`` makes the assigned GPU ``cuda:0``) when Ray assigned a GPU,
    else ``cpu``; anything else is kept (``--device cuda`` without ``--gpus-per-actor`` is refused up front by
    ``jobs.config``)."""
    if requested != "auto":
        return requested
    return "cuda" if len(gpu_ids) > 0 else "cpu"


def ray_worker_device(requested: str) -> str:
    """:func:`worker_device` for the calling Ray worker (``ray.get_gpu_ids()``)."""
    import ray

    return worker_device(requested, ray.get_gpu_ids())


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What an actor ran on: ``kind`` cpu | cuda, ``name`` (GPU name or "cpu"), the GPU ids Ray assigned."""

    kind: str
    name: str
    gpu_ids: tuple

    def to_dict(self) -> dict:
        return dict(kind=self.kind, name=self.name, gpu_ids=list(self.gpu_ids))


def describe(device, gpu_ids: Sequence = ()) -> DeviceInfo:
    """A ``torch.device`` (or its string) → ``DeviceInfo``."""
    import torch

    dev = torch.device(device)
    name = "cpu"
    if dev.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(dev)
    return DeviceInfo(dev.type, name, tuple(str(g) for g in gpu_ids))


def summarize_devices(infos: Sequence[Optional[dict]]) -> dict:
    """Per-part device records (``DeviceInfo.to_dict()`` + ``actor``, None for a part without one) → the summary's
    ``attempt.devices``: ``{"kinds": {kind: parts}, "actors": {actor id: "kind (name)"}}``."""
    kinds: dict = {}
    actors: dict = {}
    for info in infos:
        kind = info["kind"] if info else "unknown"
        kinds[kind] = kinds.get(kind, 0) + 1
        if info and info.get("actor"):
            actors[info["actor"]] = f"{info['kind']} ({info['name']})" + (
                f" gpu {','.join(info['gpu_ids'])}" if info.get("gpu_ids") else "")
    return dict(kinds=kinds, actors=actors)


def fault_kind(exc: BaseException) -> Optional[str]:
    """``"oom"`` (CUDA out of memory: shrink the batch and retry), ``"sticky"`` (a CUDA error that poisons the
    context: the actor must exit), or None (an ordinary error: the image becomes ``inference_error``).

    Classified by type for OOM (``torch.cuda.OutOfMemoryError``, which exists in CPU builds too) and by message
    otherwise: torch raises sticky CUDA errors as plain ``RuntimeError``/``torch.AcceleratorError`` whose text starts
    with "CUDA error:" (:data:`STICKY_MARKERS`)."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(exc):
        return "oom"
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("CUDA error" in text or any(m in text for m in STICKY_MARKERS)):
        return "sticky"
    return None


def injected_fault(batch_size: int) -> Optional[BaseException]:
    """The exception the test hook :data:`FAULT_ENV` asks for on a segmenter call of ``batch_size`` images, or None."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    kind, _, arg = spec.partition(":")
    if kind == "oom" and batch_size > int(arg):
        import torch

        return torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by {FAULT_ENV}, batch {batch_size})")
    if kind == "sticky" and arg and not os.path.exists(arg):
        try:
            with open(arg, "x"):
                pass
        except FileExistsError:
            return None
        return RuntimeError(f"CUDA error: an illegal memory access was encountered (injected by {FAULT_ENV})")
    return None
