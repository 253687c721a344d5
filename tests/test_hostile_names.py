"""Hostile names and non-regular files through the real job (local Ray, real files, a real moto S3 server).

Names are literal: ``scene::01.jpg`` next to a file ``scene`` must be read as itself (fsspec would read it as
the URL chain ``scene`` → ``01.jpg``), ``img?versionId=3.jpg`` on S3 is one key (s3fs would split off a
version id). Every input image gets a distinct size, so each row's width/height proves which bytes were read.
A FIFO (or a symlink to one) is an ``unsupported`` row and is never opened for a blocking read; the job ends.
"""
from __future__ import annotations

import collections
import io
import os
import pathlib
import shutil
import uuid
from typing import Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image

from jobs.containers import build_index
from jobs.inputs import InputError, list_files
from tests.job_fixtures import committed_rows, run_cli, s3_client

pytestmark = pytest.mark.slow

LOCAL_NAMES = ["scene::01.jpg", "a#b.jpg", "100%.jpg", "sp ace.jpg", "brackets[1].jpg", "star*.jpg", "q?x.jpg",
               "ünï.jpg"]
S3_NAMES = ["scene::01.jpg", "img?versionId=3.jpg", "a#b.jpg", "sp ace.jpg", "ünï.jpg", "100%.jpg", "star*.jpg",
            "brackets[1].jpg"]
DECOYS = {"scene": (30, 30), "img": (31, 31)}  # what a chain / query-string parse would read instead


def _image(size: Tuple[int, int], seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _sized(names: List[str]) -> Dict[str, Tuple[int, int]]:
    """name → (width, height), all distinct and distinct from the decoys."""
    return {n: (48 + 8 * i, 40 + 4 * i) for i, n in enumerate(names)}


def _by_name(rows: List[dict]) -> Dict[str, dict]:
    names = [r["source_uri"].rsplit("/", 1)[-1] for r in rows]
    assert len(set(names)) == len(names), collections.Counter(names)  # exactly one row per input
    return dict(zip(names, rows))


def _hostile_dir(root: pathlib.Path) -> Dict[str, Tuple[int, int]]:
    """Images with hostile names, the decoy ``scene``, a FIFO and symlinks in ``root``; returns expected sizes."""
    root.mkdir()
    sizes = _sized(LOCAL_NAMES + ["link.jpg"])
    for i, name in enumerate(LOCAL_NAMES):
        (root / name).write_bytes(_image(sizes[name], i))
    (root / "scene").write_bytes(_image(DECOYS["scene"], 99, "PNG"))
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target.png").write_bytes(_image(sizes["link.jpg"], 77, "PNG"))
    os.symlink(elsewhere / "target.png", root / "link.jpg")  # a symlink to a regular file is read
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(elsewhere / "fifo")
    os.symlink(elsewhere / "fifo", root / "link-to-fifo.jpg")
    return sizes


def _copy_model_files(model_args: List[str], dest: pathlib.Path) -> List[str]:
    """``model_args`` with the weights, vocabulary and templates copied to names holding ``::``."""
    dest.mkdir()
    args = list(model_args)
    for flag, name in (("--weights", "tiny::w.pt"), ("--vocabulary", "vocab::1.txt"), ("--templates", "t::1.txt")):
        i = args.index(flag) + 1
        shutil.copyfile(args[i], dest / name)
        args[i] = str(dest / name)
    return args


def test_index_keeps_regular_files_and_marks_the_rest(tmp_path):
    d = tmp_path / "in"
    _hostile_dir(d)
    rows = {r["source_uri"].rsplit("/", 1)[-1]: r for r in build_index(str(d), "images").to_pylist()}
    assert set(rows) == set(LOCAL_NAMES) | {"link.jpg", "pipe.jpg", "link-to-fifo.jpg"}
    for name in ("pipe.jpg", "link-to-fifo.jpg"):
        assert (rows[name]["pre_status"], rows[name]["pre_error"]) == ("unsupported", "not a regular file: FIFO")
    assert all(rows[n]["pre_status"] is None for n in LOCAL_NAMES + ["link.jpg"])
    assert str(d / "pipe.jpg") not in list_files(str(d), (".jpg",))
    assert build_index(str(d / "brackets[1].jpg"), "images").column("path").to_pylist() == [str(d / "brackets[1].jpg")]
    with pytest.raises(InputError, match="not a regular file: FIFO"):
        build_index(str(d / "pipe.jpg"), "images")


@pytest.mark.timeout(600)
def test_local_hostile_names_and_fifo(ray_local, model_args, tmp_path):
    sizes = _hostile_dir(tmp_path / "in")
    args = _copy_model_files(model_args, tmp_path / "model::files")
    out = tmp_path / "out"
    summary = run_cli(["--input", str(tmp_path / "in"), "--output", str(out), *args])

    by = _by_name(committed_rows(str(out)))
    assert set(by) == set(sizes) | {"pipe.jpg", "link-to-fifo.jpg"} and summary["rows"] == len(by)
    for name, (w, h) in sizes.items():
        assert (by[name]["status"], by[name]["width"], by[name]["height"]) == ("ok", w, h), name
    for name in ("pipe.jpg", "link-to-fifo.jpg"):
        assert (by[name]["status"], by[name]["error"]) == ("unsupported", "not a regular file: FIFO")


@pytest.mark.timeout(600)
def test_manifest_listing_a_fifo(ray_local, model_args, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "ok::1.jpg").write_bytes(_image((52, 44), 1))
    os.mkfifo(d / "pipe.jpg")
    (d / "folder.jpg").mkdir()
    manifest = d / "list.csv"
    manifest.write_text("uri\nok::1.jpg\npipe.jpg\nfolder.jpg\n")
    out = tmp_path / "out"
    run_cli(["--input", str(manifest), "--output", str(out), *model_args])

    by = _by_name(committed_rows(str(out)))
    assert set(by) == {"ok::1.jpg", "pipe.jpg", "folder.jpg"}
    assert (by["ok::1.jpg"]["status"], by["ok::1.jpg"]["width"], by["ok::1.jpg"]["height"]) == ("ok", 52, 44)
    assert (by["pipe.jpg"]["status"], by["pipe.jpg"]["error"]) == ("unsupported", "not a regular file: FIFO")
    assert (by["folder.jpg"]["status"], by["folder.jpg"]["error"]) == ("unsupported", "not a regular file: directory")


@pytest.mark.timeout(600)
def test_s3_hostile_keys(ray_local, moto_endpoint, model_args, tmp_path):
    bucket = f"rl-hostile-{uuid.uuid4().hex[:8]}"
    c = s3_client(moto_endpoint)
    c.create_bucket(Bucket=bucket)
    sizes = _sized(S3_NAMES)
    for i, name in enumerate(S3_NAMES):
        c.put_object(Bucket=bucket, Key=f"in/{name}", Body=_image(sizes[name], i))
    for decoy, size in DECOYS.items():
        c.put_object(Bucket=bucket, Key=f"in/{decoy}", Body=_image(size, 99, "PNG"))
    args = list(model_args)
    for flag, key in (("--weights", "models/tiny::w.pt"), ("--vocabulary", "vocab/v::1.txt"),
                      ("--templates", "vocab/t?versionId=1.txt")):
        i = args.index(flag) + 1
        c.put_object(Bucket=bucket, Key=key, Body=pathlib.Path(args[i]).read_bytes())
        args[i] = f"s3://{bucket}/{key}"
    out = f"s3://{bucket}/out"
    run_cli(["--input", f"s3://{bucket}/in/", "--output", out, "--s3-endpoint", moto_endpoint, *args])

    by = _by_name(committed_rows(out))
    assert set(by) == set(S3_NAMES)
    for name, (w, h) in sizes.items():
        assert by[name]["source_uri"] == f"s3://{bucket}/in/{name}"
        assert (by[name]["status"], by[name]["width"], by[name]["height"]) == ("ok", w, h), name
