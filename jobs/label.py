"""CLI: label images with ResCLIP on Ray (read tasks + segment actor pool) to COCO-RLE Parquet, exactly once, resumable.

    python -m jobs.label --input s3://bucket/images/ --output s3://bucket/labels/ --preset voc21

Runs locally (a local Ray) or under ``ray job submit --working-dir . -- python -m jobs.label ...``.
Credentials come only from the environment or the instance; there is no flag for them.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import List, Optional

from jobs import options
from jobs.config import RETRY_POLICIES, LabelJobConfig
from jobs.inputs import INPUT_FORMATS, InputError
from jobs.lease import EXIT_SKIPPED, LeaseLost, RunInProgress
from jobs.runner import JobError
from pipeline.config import ConfigError
from pipeline.kernels.native import KernelBuildError
from pipeline.model.clip import WeightsError

SMOKE_WARNING = ("!" * 78 + "\n!! SMOKE MODE (--random-weights): random CLIP weights. The job, the files and the\n"
                 "!! schema are real, but the LABELS ARE MEANINGLESS. Rows carry weights_digest random:...\n"
                 + "!" * 78)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.label", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--input", required=True, help="prefix, glob, file or manifest URI (local path or s3://)")
    a("--output", required=True, help="output root; runs go to OUTPUT/runs/<run_id>/")
    a("--input-format", default="auto", choices=INPUT_FORMATS)
    options.add_segmenter_options(p, preset_required=True)
    options.add_model_options(p, weights_help=" (the default when no weights are given)")
    a("--run-id", help="resume this run, or start it under this id "
                       "(default: resume this config's unfinished run, else new)")
    a("--num-actors", type=_actors, default=(1, None), metavar="N|MIN-MAX",
      help="segment actors: N, or an elastic pool MIN-MAX that starts with what the cluster can place and grows "
           "(and shrinks) with it, never waiting for MAX (docs/job.md, 'Resources')")
    a("--gpus-per-actor", type=float, default=0.0)
    a("--cpus-per-actor", type=float, default=1.0, help="also the torch thread count on CPU")
    a("--actor-resources", type=_json_object, metavar="JSON",
      help='custom Ray resources per segment actor, e.g. \'{"gpu_node": 1}\' to pin actors to a node type')
    a("--images-per-call", type=int, default=LabelJobConfig.images_per_call,
      help="images per segmenter call inside an actor (actors get whole shards); default 4 on a CPU actor, 16 on a "
           "GPU actor; crops per trunk forward are --set crops_per_forward=N (default 8 on CPU, 32 on GPU)")
    options.add_alias(p, "--batch-size", "images_per_call", type=int)
    a("--shard-size", type=int, default=256, help="images per committed part file, per read task and per actor call")
    a("--read-threads", type=int, default=LabelJobConfig.read_threads, help="objects a read task fetches at a time")
    options.add_alias(p, "--read-batch-size", "read_threads", type=int)
    a("--max-pixels", type=int, default=LabelJobConfig.max_pixels, help="refuse larger images (status too_large)")
    a("--background", default="auto", help="auto | none | CLASS_NAME: class left out of segments")
    a("--instances", action="store_true",
      help="one segment per connected component of each class (instance_id, COCO instance export)")
    a("--min-instance-area", type=int, default=0, metavar="PX", help="with --instances: drop smaller components")
    a("--ignore-below", type=float, metavar="P",
      help="pixels whose winning class probability is below P go to the row's ignore region, in no segment")
    a("--retry", default="transient", choices=sorted(RETRY_POLICIES), help="failed statuses a later run retries")
    a("--bytes-column", default="jpg", help="Parquet input: image bytes column")
    a("--id-column", default="key", help="Parquet/manifest input: id column")
    a("--uri-column", help="manifest: URI column (default: uri, url, path, image_uri, image_url)")
    a("--text-cache", help="URI for cached text embeddings (default OUTPUT/_text_cache)")
    a("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)")
    a("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    a("--shared-fs", action="store_true",
      help="local --input/--output/--weights/--text-cache paths are on a filesystem every node mounts (multi-node)")
    a("--if-running", default=LabelJobConfig.if_running, choices=("skip", "wait"),
      help="a run of the same config and output is in progress (holds its lease): skip = exit 75 naming it, "
           "wait = wait until it commits or its lease expires, then label what is still new (docs/job.md)")
    a("--lease-ttl", type=float, default=LabelJobConfig.lease_ttl, metavar="SECONDS",
      help="a run's lease expires this long after its driver's last heartbeat (every TTL/4); only then is a "
           "crashed run resumed by another run")
    a("--max-error-rate", type=float, default=LabelJobConfig.max_error_rate,
      help="exit 3 (job FAILED) when a larger share of the run's rows is not ok; the rows are committed anyway")
    return p


def _actors(text: str) -> tuple:
    """``N`` → (N, None); ``MIN-MAX`` → (MIN, MAX)."""
    lo, sep, hi = text.partition("-")
    try:
        pair = (int(lo), int(hi) if sep else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX (whole numbers), got {text!r}") from None
    if pair[0] <= 0 or (pair[1] is not None and pair[1] < pair[0]):
        raise argparse.ArgumentTypeError(f"expected N > 0 or 0 < MIN <= MAX, got {text!r}")
    return pair


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def config_from_args(argv: Optional[List[str]] = None) -> LabelJobConfig:
    ns = vars(build_parser().parse_args(argv))
    ns["overrides"] = options.parse_overrides(ns["overrides"]) or None
    ns["num_actors"], ns["max_actors"] = ns["num_actors"]
    return LabelJobConfig(**ns).validate()


EXIT_ERROR = 2  # the job could not run: bad config, input, weights, paths (`error: ...`)
EXIT_FAILED_RUN = 3  # the run is committed, but too many of its rows failed (--max-error-rate)
# EXIT_SKIPPED = 75 (jobs.lease): --if-running skip found a live run of the same config; nothing was labeled
USER_ERRORS = (ConfigError, InputError, JobError, KeyError, PermissionError, FileNotFoundError, WeightsError,
               KernelBuildError, LeaseLost)
_TRACEBACK_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): (.+)$")


def user_error(exc: BaseException) -> Optional[str]:
    """The one-line message of a known user-facing error, also when it was raised inside a Ray task (a
    ``RayTaskError`` carrying it as ``cause``) or an actor's constructor (an ``ActorDiedError`` that carries only
    the remote traceback's text); None for anything else."""
    names = {t.__name__ for t in USER_ERRORS}
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, USER_ERRORS):
            exc = getattr(exc, "cause", None) or exc  # RayTaskError(X) is an X whose .cause is the original
            return exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        if getattr(exc, "actor_init_failed", False):
            lines = [m for m in map(_TRACEBACK_LAST_LINE.match, str(exc).splitlines()) if m and m.group(1) in names]
            if lines:
                return lines[-1].group(2)
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """The CLI: exit 0 (committed, or nothing to label), 2 (`error: ...`, nothing labeled), 3 (committed, but the
    run failed --max-error-rate; the summary names the most frequent errors), 75 (skipped: a live run of the same
    config holds the lease, ``--if-running skip``), 1 (an unexpected crash)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from jobs.runner import policy_failure, run_job

    try:
        cfg = config_from_args(argv)
        if cfg.random_weights:
            print(SMOKE_WARNING, file=sys.stderr, flush=True)
        summary = run_job(cfg)
    except RunInProgress as e:
        print(str(e), file=sys.stderr, flush=True)
        return EXIT_SKIPPED
    except Exception as e:  # noqa: BLE001 - known errors become one line; the rest keeps its traceback
        message = user_error(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
    print(format_summary(summary), flush=True)
    for warning in summary.get("warnings") or []:  # e.g. --ignore-below left almost nothing labelled
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if cfg.random_weights:
        print(SMOKE_WARNING, file=sys.stderr, flush=True)
    failure = policy_failure(summary, cfg.max_error_rate)
    if failure:
        print(f"error: run {summary['run_id']} failed: {failure}; its rows are committed (see top errors above)",
              file=sys.stderr)
        return EXIT_FAILED_RUN
    return 0


def format_summary(s: dict) -> str:
    a = s.get("attempt", {})
    if not s.get("run_id"):
        took = (f" ({a['wall_seconds']:.1f} s, of which Ray start-up {a.get('ray_start_seconds', 0.0):.1f} s; "
                "no model loaded)") if "wall_seconds" in a else ""
        return f"nothing to label: every input is already committed (config {s.get('job_hash')}){took}"
    lines = [f"run {s['run_id']}: {s['rows']} rows committed in {len(s['files'])} parts",
             f"  output: {s.get('run_uri', '?')}",
             f"  this attempt: {a.get('images_labeled', 0)} images in {a.get('label_seconds', 0)} s "
             f"({a.get('images_per_second', 0)} images/s), total {a.get('wall_seconds', 0)} s"
             + (f" (Ray start-up {a['ray_start_seconds']} s)" if "ray_start_seconds" in a else ""),
             "  by status: " + json.dumps(s["by_status"], sort_keys=True),
             "  actor devices: " + json.dumps(a.get("devices", {}), sort_keys=True),
             "  stage seconds (summed over images): "
             + json.dumps({k: round(v, 2) for k, v in s["stage_seconds_summed"].items()})]
    if s.get("ignored_share") is not None:
        lines.append(f"  ignored (--ignore-below {s['ignore_below']}): {s['ignored_share']:.1%} of the ok rows' "
                     f"pixels ({s['ignored_pixels']} of {s['ok_pixels']}; warning above "
                     f"{s['ignored_warn_share']:.0%})")
    top = s.get("top_errors") or []
    if top:
        lines.append("  top errors:")
        lines += [f"    {e['count']} x {e['status']}: {e['message']} (e.g. {e['example']})" for e in top[:5]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
