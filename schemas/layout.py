"""The on-disk contract of a labeling run, declared once: ``jobs/`` writes it, ``pipeline/labels/reader.py`` and every
other reader read it.

    OUTPUT/_text_cache/<key>.safetensors        text embeddings (content-keyed)
    OUTPUT/_planning/<attempt>/                 planning's staging files (jobs/planner.py), deleted after it
    OUTPUT/_leases/<job_hash>/lease-<epoch>.json
                                                run coordination per (output, job_hash) (jobs/lease.py): the
                                                highest epoch is the lease; created only if absent (local: link,
                                                S3: If-None-Match: *), rewritten only by its holder (heartbeat:
                                                expires_at; release: released=true); JSON {job_hash, epoch,
                                                holder, host, pid, run_id, state, ttl_seconds, acquired_at,
                                                renewed_at, expires_at (Unix seconds, the holder's clock),
                                                released}; epochs below the previous one are deleted
    OUTPUT/runs/<run_id>/_plan/<attempt>/plan-<bucket>.parquet
                                                the run's inputs (``jobs.inputs.INDEX_SCHEMA``), sorted by
                                                (bucket, image_id); shard k = global plan rows
                                                [k * shard_size, (k + 1) * shard_size)
    OUTPUT/runs/<run_id>/_plan.json             the registration, written once (no-clobber) after the plan files:
                                                config, provenance, categories, plan files with their row counts
    OUTPUT/runs/<run_id>/part-<shard>.parquet   one per shard, ``LABEL_SCHEMA`` rows, written once by a worker
    OUTPUT/runs/<run_id>/_SUCCESS.json          written last: files, row counts, status counts, top errors

Layout 1 (before this file existed) registered a run with ``_plan.parquet`` (plan rows + meta in its Parquet
metadata under ``reslabel.plan``); its committed runs read exactly as before (parts and ``_SUCCESS.json`` did
not change), and an unfinished layout-1 run is refused with a message saying how to go on.
"""
from __future__ import annotations

import re
from typing import Optional

LAYOUT_VERSION = 2
RUNS = "runs"
TEXT_CACHE = "_text_cache"
PLANNING = "_planning"
LEASES = "_leases"
_LEASE = re.compile(r"lease-(\d{10,})\.json")
PLAN_DIR = "_plan"
PLAN_MANIFEST = "_plan.json"
LEGACY_PLAN = "_plan.parquet"  # layout 1: the plan table, its meta in the Parquet metadata under LEGACY_PLAN_KEY
LEGACY_PLAN_KEY = b"reslabel.plan"
SUCCESS = "_SUCCESS.json"
_PART = re.compile(r"part-(\d{5,})\.parquet")

# Parquet key-value metadata of every part (strings; JSON where structured)
META_SCHEMA_VERSION = "reslabel.schema_version"
META_RUN_ID = "reslabel.run_id"
META_SHARD = "reslabel.shard"
META_CATEGORIES = "reslabel.categories"  # [{"id", "name"}]
META_CONFIG = "reslabel.config"  # {"job", "segmenter", "model"}
META_PROVENANCE = "reslabel.provenance"
META_EXCLUDED = "reslabel.excluded_category_ids"
META_PART_STATS = "reslabel.part_stats"  # {"by_status", "stage_seconds", "errors"}


def job_hash_of(record: dict) -> str:
    """The job hash of a run record (``_plan.json``, ``_SUCCESS.json``, a summary); records of schema 1.x runs
    called it ``config_hash``."""
    return record["job_hash"] if "job_hash" in record else record["config_hash"]


def part_name(shard: int) -> str:
    """File name of shard ``shard``'s part."""
    return f"part-{shard:05d}.parquet"


def shard_of(name: str) -> Optional[int]:
    """The shard number of a part file name (a path or URI is fine), or None for any other file."""
    m = _PART.fullmatch(name.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def plan_file_name(bucket: int) -> str:
    return f"plan-{bucket:05d}.parquet"


def lease_name(epoch: int) -> str:
    """File name of a run lease's epoch ``epoch`` (under ``OUTPUT/_leases/<job_hash>/``)."""
    return f"lease-{epoch:010d}.json"


def lease_epoch_of(name: str) -> Optional[int]:
    """The epoch of a lease file name (a path or URI is fine), or None for any other file."""
    m = _LEASE.fullmatch(name.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None
