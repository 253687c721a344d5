"""``LabelJobConfig``: every option of the labeling job, validated once before any work.

The same dataclass is the CLI (``jobs.label``), the run's recorded config (``_plan.json``,
Parquet key-value metadata, ``_SUCCESS.json``) and the Python API. It holds no credentials.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from jobs.inputs import INPUT_FORMATS
from pipeline.config import DTYPES, ConfigError, ModelConfig, SegmenterConfig
from pipeline.io.decode import DEFAULT_MAX_PIXELS
from pipeline.kernels import native

RUN_ID_MAX_CHARS = 128
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # ASCII; a folder name on every file system and object store

RETRY_POLICIES = {
    # statuses of committed rows that a later run labels again
    "transient": ("read_error", "inference_error"),
    "all": ("read_error", "inference_error", "decode_error", "unsupported", "too_large", "too_small", "empty"),
    "none": (),
}


def run_id_problem(run_id: str) -> Optional[str]:
    """Why ``run_id`` cannot name a run (its folder ``OUTPUT/runs/<run_id>/``), or None."""
    if len(run_id) <= RUN_ID_MAX_CHARS and _RUN_ID.fullmatch(run_id):
        return None
    shown = repr(run_id) if len(run_id) <= 40 else f"{run_id[:40]!r}... ({len(run_id)} characters)"
    return (f"--run-id {shown}: use at most {RUN_ID_MAX_CHARS} characters, only ASCII letters, digits, '-', '_' "
            f"and '.', not starting with '-', '_' or '.'")


@dataclasses.dataclass(frozen=True)
class LabelJobConfig:
    """Options of one labeling job. Sizes in pixels, counts in images unless noted."""

    input: str
    output: str
    preset: str = "voc21"
    input_format: str = "auto"
    vocabulary: Optional[str] = None  # file/URI overriding the preset's vocabulary
    templates: Optional[str] = None  # prompt templates file/URI (None: the 80 ImageNet templates)
    method: str = "resclip"
    base: str = "naclip"
    overrides: Optional[Dict[str, Any]] = None  # SegmenterConfig fields over the preset's (--set KEY=VALUE)
    model: str = "ViT-B-16"  # open_clip name or a JSON config path
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    random_weights: bool = False  # offline smoke mode: random CLIP weights, labels are meaningless
    dtype: str = "fp32"
    device: str = "auto"
    run_id: Optional[str] = None  # None: resume this config's unfinished run, else a new timestamped id
    num_actors: int = 1  # segment actors; with max_actors, the elastic pool's MIN (--num-actors MIN-MAX)
    max_actors: Optional[int] = None  # elastic pool: grow up to this many actors as the cluster allows
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0  # also the torch thread count of a CPU actor
    actor_resources: Optional[Dict[str, float]] = None  # custom Ray resources per segment actor (node pinning)
    images_per_call: Optional[int] = None  # images per segmenter call in an actor; None: 4 on CPU, 16 on GPU
    shard_size: int = 256  # images per committed part file, per read task and per actor call
    read_threads: int = 8  # objects a read task fetches at a time
    max_pixels: int = DEFAULT_MAX_PIXELS
    background: str = "auto"  # auto | none | a class name to drop from segments
    retry: str = "transient"  # which failed statuses a later run retries (see RETRY_POLICIES)
    bytes_column: str = "jpg"
    id_column: str = "key"
    uri_column: Optional[str] = None
    text_cache: Optional[str] = None  # None: OUTPUT/_text_cache
    s3_endpoint: Optional[str] = None  # URL of an S3-compatible endpoint (never credentials)
    ray_address: Optional[str] = None  # None: $RAY_ADDRESS, else a local Ray
    shared_fs: bool = False  # local --input/--output/--weights/--text-cache paths are mounted on every node
    max_error_rate: float = 0.5  # the job fails (exit 3) when a larger share of its rows is not ok
    instances: bool = False  # one segment per connected component of each class (instance_id), not per class
    min_instance_area: int = 0  # with instances: components smaller than this (pixels) are dropped
    ignore_below: Optional[float] = None  # pixels whose winning probability is below this: the row's ignore RLE
    if_running: str = "skip"  # a live run of the same config holds the lease: skip (exit 75) | wait (jobs/lease.py)
    lease_ttl: float = 120.0  # seconds without a heartbeat after which a run's lease expires (then it is resumable)

    def validate(self) -> "LabelJobConfig":
        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(f"--input-format {self.input_format!r}; valid: {', '.join(INPUT_FORMATS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        if sum([self.pretrained is not None, self.weights is not None, self.random_weights]) > 1:
            raise ConfigError("give only one of --pretrained TAG, --weights URI, --random-weights")
        if self.retry not in RETRY_POLICIES:
            raise ConfigError(f"--retry {self.retry!r}; valid: {', '.join(RETRY_POLICIES)}")
        for name in ("num_actors", "images_per_call", "shard_size", "read_threads", "max_pixels"):
            if getattr(self, name) is not None and int(getattr(self, name)) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)})")
        if self.max_actors is not None and int(self.max_actors) < int(self.num_actors):
            raise ConfigError(f"--num-actors {self.actors_spec()}: MAX must be >= MIN")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise ConfigError("--gpus-per-actor must be >= 0 and --cpus-per-actor > 0")
        if self.device == "cuda" and not self.gpus_per_actor:  # gpu: Ray gives GPUs only to actors asking for them
            raise ConfigError("--device cuda needs --gpus-per-actor > 0 (e.g. 1, or 0.5 for two actors per GPU): "
                              "Ray assigns GPUs only to actors that ask for them")
        if self.ignore_below is not None and not 0.0 <= self.ignore_below <= 1.0:
            raise ConfigError(f"--ignore-below {self.ignore_below} must be a probability in [0, 1]")
        if self.min_instance_area < 0 or (self.min_instance_area and not self.instances):
            raise ConfigError(f"--min-instance-area {self.min_instance_area}: must be >= 0 and needs --instances")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(f"--max-error-rate {self.max_error_rate} must be a fraction in [0, 1]")
        for name, amount in (self.actor_resources or {}).items():
            if not isinstance(name, str) or not name or isinstance(amount, bool) \
                    or not isinstance(amount, (int, float)) or amount <= 0:
                raise ConfigError(f"--actor-resources: {name!r}: {amount!r} must map a resource name to a number > 0")
        if self.if_running not in ("skip", "wait"):
            raise ConfigError(f"--if-running {self.if_running!r}; valid: skip, wait")
        if not self.lease_ttl >= 2.0:
            raise ConfigError(f"--lease-ttl {self.lease_ttl} must be >= 2 seconds")
        problem = None if self.run_id is None else run_id_problem(self.run_id)
        if problem:
            raise ConfigError(problem)
        self.segmenter_config()
        native.kernel_mode()  # RESLABEL_PAMR_KERNEL, if set, must be a known value
        return self

    def actors_spec(self) -> str:
        """``--num-actors`` as given: ``N`` or ``MIN-MAX``."""
        if self.max_actors is None or self.max_actors == self.num_actors:
            return str(self.num_actors)
        return f"{self.num_actors}-{self.max_actors}"

    def segmenter_config(self) -> SegmenterConfig:
        """The preset with the job's overrides (``--set``, then ``--vocabulary``/``--templates``); raises
        ``KeyError``/``ConfigError`` naming valid values."""
        from pipeline import get_preset

        overrides = dict(self.overrides or {})
        if self.vocabulary is not None:
            overrides["vocabulary"] = self.vocabulary
        if self.templates is not None:
            overrides["templates"] = self.templates
        return get_preset(self.preset, method=self.method, base=self.base, **overrides)

    def model_config(self) -> ModelConfig:
        pretrained = self.pretrained
        if pretrained is None and self.weights is None and not self.random_weights:
            pretrained = "openai"
        return ModelConfig(arch=self.model, pretrained=pretrained, weights=self.weights,
                           random_init=self.random_weights, dtype=self.dtype, device=self.device).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def task_paths(self) -> List[Tuple[str, Optional[str]]]:
        """(option, value) of the paths that tasks and actors on any node read or write."""
        return [(name, getattr(self, name)) for name in ("input", "output", "weights", "text_cache")]

    def with_absolute_paths(self) -> "LabelJobConfig":
        """Local relative paths made absolute against this process's working directory (the driver's)."""
        def absolute(v: Optional[str]) -> Optional[str]:
            if v is None or "://" in v and not v.startswith("file://"):
                return v
            return os.path.abspath(os.path.expanduser(v[len("file://"):] if v.startswith("file://") else v))
        return dataclasses.replace(self, **{name: absolute(v) for name, v in self.task_paths()})

    # options that change the rows (beyond the segmenter's config hash): part of the run's config hash
    def row_options(self) -> dict:
        """Only options set away from their defaults are added, so the hash of a run without them is unchanged."""
        out = {"background": self.background, "max_pixels": self.max_pixels}
        if self.instances:
            out.update(instances=True, min_instance_area=self.min_instance_area)
        if self.ignore_below is not None:
            out["ignore_below"] = float(self.ignore_below)
        return out
