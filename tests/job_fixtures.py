"""Fixtures for the job tests (import them into a test module): one local Ray per session, a real
moto S3 server on 127.0.0.1, a folder of sample images (good and bad), and helpers to check outputs
against the in-process segmenter. Credentials are fake and set in the environment *before* Ray starts,
the only way the job accepts them.
"""
from __future__ import annotations

import io
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

TEST_ACCESS_KEY = "reslabel-test-access-key"
TEST_SECRET = "reslabel-test-SECRET-4b1d9e"  # must never appear in any output or log
os.environ["AWS_ACCESS_KEY_ID"] = TEST_ACCESS_KEY
os.environ["AWS_SECRET_ACCESS_KEY"] = TEST_SECRET
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

_SHARED: Dict[str, object] = {}


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray (2 CPUs) shared by the session; reused if already running."""
    import ray

    owner = not ray.is_initialized()
    if owner:
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    if owner:
        ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """URL of a moto S3 server (a real HTTP server, started once per session)."""
    if "moto" in _SHARED:
        yield _SHARED["moto"]
        return
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)
    _SHARED["moto"] = f"http://127.0.0.1:{port}"
    yield _SHARED["moto"]
    proc.terminate()
    proc.wait(timeout=10)
    _SHARED.pop("moto", None)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def upload_dir(endpoint: str, local: pathlib.Path, bucket: str, prefix: str) -> None:
    c = s3_client(endpoint)
    try:
        c.create_bucket(Bucket=bucket)
    except c.exceptions.BucketAlreadyOwnedByYou:
        pass
    for p in sorted(local.rglob("*")):
        if p.is_file():
            c.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(local).as_posix()}", Body=p.read_bytes())


# ---- sample inputs ------------------------------------------------------------------------------
def _photo(name: str, size=(96, 72)) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).resize(size)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def sample_files() -> Dict[str, tuple]:
    """name → (bytes, expected status). Small photos (fast) plus every kind of bad input."""
    exif = Image.Exif()
    exif[0x0112] = 6
    gray16 = Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16))
    jpg = _save(_photo("astronaut"), "JPEG")
    return {
        "astronaut.jpg": (jpg, "ok"),
        "chelsea.png": (_save(_photo("chelsea", (80, 60)), "PNG"), "ok"),
        "coffee.webp": (_save(_photo("coffee", (90, 60)), "WEBP"), "ok"),
        "rotated.jpg": (_save(_photo("chelsea", (64, 48)), "JPEG", exif=exif.tobytes()), "ok"),
        "cmyk.jpg": (_save(_photo("coffee", (64, 48)).convert("CMYK"), "JPEG"), "ok"),
        "gray16.png": (_save(gray16, "PNG"), "ok"),
        "pixel.bmp": (_save(Image.new("RGB", (1, 1), (9, 200, 30)), "BMP"), "ok"),
        "truncated.jpg": (jpg[: len(jpg) // 3], "decode_error"),
        "empty.png": (b"", "empty"),
        "notimage.jpg": (b"this is a text file, not a JPEG\n", "decode_error"),
        "huge.png": (_save(Image.new("L", (1500, 1200)), "PNG"), "too_large"),
        "sliver.png": (_save(Image.new("RGB", (1000, 2)), "PNG"), "too_small"),  # resizes to 4x2048 < one patch
    }


MAX_PIXELS = 1_000_000  # passed as --max-pixels so huge.png is too_large while staying small on disk


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("images")
    for name, (data, _) in sample_files().items():
        (d / name).write_bytes(data)
    return d


def expected_status_by_name() -> Dict[str, str]:
    return {n: s for n, (_, s) in sample_files().items()}


@pytest.fixture(scope="session")
def model_args(tiny_arch, tiny_weights, tiny_vocab_file, tiny_templates_file, tmp_path_factory) -> List[str]:
    """The tiny model's job options. ``--text-cache`` is one folder for the session (per xdist worker), so the
    text embeddings of this config are encoded by the first job only and later jobs read them from the cache
    (docs/job.md): that saves each job a prepare task (a worker process that imports torch and open_clip and
    builds the model, ~4.6 CPU-s). Tests of the first-run path drop it with ``own_text_cache``."""
    return ["--preset", "voc21", "--model", tiny_arch, "--weights", tiny_weights, "--vocabulary", tiny_vocab_file,
            "--templates", tiny_templates_file, "--max-pixels", str(MAX_PIXELS), "--shard-size", "4",
            "--images-per-call", "4", "--read-threads", "4", "--text-cache", str(tmp_path_factory.mktemp("text"))]


def own_text_cache(args: List[str]) -> List[str]:
    """``args`` without the session's ``--text-cache``: the job caches under OUTPUT/_text_cache, so a new output
    is the config's first run (its prepare task runs), and a multi-node job is not refused a local cache path."""
    i = args.index("--text-cache")
    return args[:i] + args[i + 2:]


def run_cli(args: List[str]) -> dict:
    """Parse ``args`` exactly like ``python -m jobs.label`` and run in-process (the session's Ray)."""
    from jobs.label import config_from_args
    from jobs.runner import run_job

    return run_job(config_from_args(args))


# ---- checks -------------------------------------------------------------------------------------
def committed_rows(output: str) -> List[dict]:
    """All rows of all committed runs under ``output`` (via the run's ``_SUCCESS.json`` file list)."""
    from jobs import commit, storage
    from schemas import layout

    rows = []
    for run in commit.list_runs(output):
        if run["committed"]:
            for f in storage.read_json(storage.join(run["uri"], layout.SUCCESS))["files"]:
                rows += _read_parquet(storage.join(run["uri"], f["name"])).to_pylist()
    return rows


def _read_parquet(uri: str):
    import pyarrow.parquet as pq

    from jobs import storage

    fs, path = storage.fs_for(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def label_map_from_segments(row: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    out = np.full((row["height"], row["width"]), -1, np.int32)
    for s in row["segments"]:
        m = mask_utils.decode({"size": s["rle"]["size"], "counts": s["rle"]["counts"]}).astype(bool)
        out[m] = s["category_id"]
    return out


def assert_masks_match_inprocess(rows: List[dict], files: Dict[str, bytes], model_args: List[str]) -> int:
    """Decoded masks of ``ok`` rows == the in-process segmenter's labels for the same bytes. Returns #checked."""
    import torch

    from jobs.label import config_from_args
    from pipeline.io.decode import decode_image
    from pipeline.segmenter import Segmenter

    torch.set_num_threads(1)  # same as the actor: identical float reductions
    key = ("segmenter", *model_args)
    if key not in _SHARED:  # built once per set of model arguments (model + text embeddings), reused by callers
        cfg = config_from_args(["--input", "x", "--output", "y", *model_args])
        _SHARED[key] = Segmenter.build(cfg.segmenter_config(), cfg.model_config())
    seg = _SHARED[key]
    checked = 0
    for row in rows:
        if row["status"] != "ok":
            continue
        name = row["source_uri"].rsplit("/", 1)[-1].split("#")[-1]
        ref = seg.segment([decode_image(files[name]).image])[0]
        assert np.array_equal(label_map_from_segments(row), ref.labels), name
        for s in row["segments"]:
            assert abs(s["score"] - float(ref.class_scores[s["category_id"]])) < 1e-5
        checked += 1
    return checked
