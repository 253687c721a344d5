"""Reliability (issue 6, part 1): every malformed or unusual input yields exactly one row with a specific
status and the job completes. The corpus (``tests/malformed.py``) goes through the real job (manifest
input, local Ray); ok rows are checked against the in-process segmenter, and the EXIF-rotated image
against the segmenter run on pixels rotated here by hand."""
from __future__ import annotations

import collections
import csv
import os

import numpy as np
import pytest
from PIL import Image

from tests.job_fixtures import assert_masks_match_inprocess, committed_rows, label_map_from_segments, run_cli
from tests.malformed import MAX_PIXELS, NON_UTF8_NAME, corpus

pytestmark = pytest.mark.slow


def _args(model_args, src, out):
    args = list(model_args)
    args[args.index("--max-pixels") + 1] = str(MAX_PIXELS)
    return ["--input", str(src), "--output", str(out), *args]


def _segmenter(model_args):
    import torch

    from jobs.label import config_from_args
    from pipeline.segmenter import Segmenter

    cfg = config_from_args(["--input", "x", "--output", "y", *model_args])
    torch.set_num_threads(1)  # same as the actor: identical float reductions
    return Segmenter.build(cfg.segmenter_config(), cfg.model_config())


def test_malformed_corpus_one_row_each(ray_local, model_args, tmp_path):
    cases = corpus()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name, case in cases.items():
        (data_dir / name).write_bytes(case.data)
    listed = list(cases) + ["control.jpg", "never-uploaded.jpg"]  # a duplicate URI and a missing object
    manifest = data_dir / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri"])
        w.writerows([[n] for n in listed])  # relative to the manifest's folder
    out = tmp_path / "out"
    summary = run_cli(_args(model_args, manifest, out))

    rows = committed_rows(str(out))
    names = collections.Counter(os.path.basename(r["source_uri"]) for r in rows)
    expected = {n: c.status for n, c in cases.items()}
    expected["never-uploaded.jpg"] = "read_error"
    assert names == collections.Counter(list(expected)), "each listed URI exactly once (duplicate collapsed)"
    got = {os.path.basename(r["source_uri"]): r["status"] for r in rows}
    assert got == expected
    assert summary["rows"] == len(expected) == len(rows) and len({r["image_id"] for r in rows}) == len(rows)
    for r in rows:
        assert (r["error"] is None) == (r["status"] == "ok"), r
        assert r["status"] == "ok" or r["segments"] == []
    by = {os.path.basename(r["source_uri"]): r for r in rows}
    assert "FileNotFound" in by["never-uploaded.jpg"]["error"]
    assert "declared" in by["bomb.png"]["error"] and by["bomb.png"]["width"] is None  # refused before decoding
    assert by["header-only.jpg"]["error"].startswith("JPEG pixel data truncated: the first scan holds 0 bytes")
    assert by["bad-crc.png"]["error"] == "PNG: broken PNG file (bad header checksum in b'tEXt')"
    assert by["unknown-compression.tif"]["error"] == "TIFF: compression 12345 is not supported"
    assert (by["extreme-aspect.png"]["width"], by["extreme-aspect.png"]["height"]) == (10000, 8)
    assert (by["one-pixel.png"]["width"], by["one-pixel.png"]["height"]) == (1, 1)
    assert all(by[n]["segments"] for n in ("one-pixel.png", "control.jpg"))  # every ok pixel is labeled

    files = {n: c.data for n, c in cases.items()}
    n_ok = sum(s == "ok" for s in expected.values())
    assert assert_masks_match_inprocess(rows, files, model_args) == n_ok

    # EXIF orientation 6: the stored pixels are landscape, the image is portrait. The job's mask must equal
    # the segmenter's labels for pixels rotated here (not via pipeline.io.decode) and differ from the raw ones.
    raw = np.asarray(Image.open(data_dir / "exif-rotated.jpg").convert("RGB"))
    rotated = np.ascontiguousarray(np.rot90(raw, k=-1))  # orientation 6 = rotate 90 degrees clockwise
    job_labels = label_map_from_segments(by["exif-rotated.jpg"])
    assert job_labels.shape == rotated.shape[:2] != raw.shape[:2]
    seg = _segmenter(model_args)
    assert np.array_equal(job_labels, seg.segment([rotated])[0].labels)
    assert not np.array_equal(job_labels, seg.segment([np.ascontiguousarray(np.rot90(raw, k=1))])[0].labels)


def test_non_utf8_file_name_is_one_row(ray_local, model_args, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    jpg = corpus()["control.jpg"].data
    (src / "plain.jpg").write_bytes(jpg)
    with open(os.path.join(os.fsencode(src), NON_UTF8_NAME), "wb") as f:
        f.write(jpg)
    out = tmp_path / "out"
    summary = run_cli(_args(model_args, src, out))
    rows = committed_rows(str(out))
    assert summary["rows"] == len(rows) == 2
    by = {r["status"]: r for r in rows}
    assert set(by) == {"ok", "unsupported"}, [(r["source_uri"], r["status"], r["error"]) for r in rows]
    bad = by["unsupported"]
    assert "UTF-8" in bad["error"] and bad["source_uri"].endswith(r"caf\xe9-\xff\xfe.jpg")
    bad["source_uri"].encode("utf-8")  # stored as valid UTF-8 text
