"""Each container input kind end to end (img2dataset Parquet, WebDataset tars, CSV manifest), plus
indexing rules that need no Ray (ids, byte ranges, duplicates, auto-detection)."""
from __future__ import annotations

import collections
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.containers import build_index
from jobs.inputs import InputError, detect_format
from tests.job_fixtures import assert_masks_match_inprocess, committed_rows, run_cli, sample_files

FILES = {n: d for n, (d, _) in sample_files().items()}
STATUS = {n: s for n, (_, s) in sample_files().items()}


def write_img2dataset(d, files=FILES, per_file=6):
    """img2dataset's Parquet layout: key, jpg (bytes), url, caption; several files and row groups."""
    d.mkdir(parents=True, exist_ok=True)
    names = sorted(files)
    for i in range(0, len(names), per_file):
        chunk = names[i:i + per_file]
        t = pa.table({"key": chunk, "jpg": [files[n] for n in chunk], "url": [f"http://x/{n}" for n in chunk],
                      "caption": ["c"] * len(chunk)})
        pq.write_table(t, d / f"{i // per_file:05d}.parquet", row_group_size=4)
    return d


def write_webdataset(d, files=FILES, per_tar=6):
    """WebDataset shards: <key>.<ext> image + <key>.json per sample, and one sample with no image."""
    d.mkdir(parents=True, exist_ok=True)
    names = sorted(files)
    for i in range(0, len(names), per_tar):
        with tarfile.open(d / f"shard-{i // per_tar:05d}.tar", "w") as tar:
            for n in names[i:i + per_tar]:
                for member, data in ((n, files[n]), (n.split(".")[0] + ".json", json.dumps({"n": n}).encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            if i == 0:
                info = tarfile.TarInfo("metaonly.json")
                info.size = 2
                tar.addfile(info, io.BytesIO(b"{}"))
    return d


def test_index_webdataset_byte_ranges(tmp_path):
    d = write_webdataset(tmp_path / "wds")
    idx = build_index(str(d), "auto")
    rows = {r["image_id"]: r for r in idx.to_pylist()}
    assert len(rows) == len(FILES) + 1 and rows["metaonly"]["pre_status"] == "unsupported"
    r = rows["chelsea"]
    raw = (d / "shard-00000.tar").read_bytes()
    assert raw[r["offset"]: r["offset"] + r["length"]] == FILES["chelsea.png"]


def test_index_parquet_and_manifest_rules(tmp_path):
    d = write_img2dataset(tmp_path / "pq")
    assert detect_format(str(d)) == "parquet"
    idx = build_index(str(d), "auto")
    assert sorted(idx.column("image_id").to_pylist()) == sorted(FILES)
    assert max(idx.column("row_group").to_pylist()) == 1  # row groups of 4
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(json.dumps({"url": f"img/{n}"}) for n in ("a.jpg", "b.png")) + "\n")
    idx = build_index(str(m), "auto")
    assert [u.endswith("img/a.jpg") or u.endswith("img/b.png")
            for u in idx.column("source_uri").to_pylist()] == [True, True]
    assert all(len(i) == 24 for i in idx.column("image_id").to_pylist())  # hash ids when none given
    dup = tmp_path / "dup.csv"
    dup.write_text("uri,id\n/a.jpg,1\n/b.jpg,1\n")
    with pytest.raises(InputError, match="duplicate image ids"):
        build_index(str(dup), "auto")
    with pytest.raises(InputError, match="no such file"):
        build_index(str(tmp_path / "missing"), "images")


def _names(rows):
    return [r["source_uri"].rsplit("/", 1)[-1].split("#")[-1] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["parquet", "webdataset", "manifest"])
def test_container_inputs_end_to_end(kind, ray_local, model_args, tmp_path):
    if kind == "parquet":
        src, fmt = write_img2dataset(tmp_path / "in"), "auto"
        expected = dict(STATUS)
    elif kind == "webdataset":
        src, fmt = write_webdataset(tmp_path / "in"), "webdataset"
        expected = {**STATUS, "metaonly": "unsupported"}
    else:
        (tmp_path / "img").mkdir()
        for n, data in FILES.items():
            (tmp_path / "img" / n).write_bytes(data)
        src, fmt = tmp_path / "manifest.csv", "manifest"
        lines = [f"img/{n},id-{n}" for n in FILES] + ["img/gone.jpg,id-gone.jpg"]
        src.write_text("uri,id\n" + "\n".join(lines) + "\n")
        expected = {**STATUS, "gone.jpg": "read_error"}
    out = tmp_path / "out"
    summary = run_cli(["--input", str(src), "--output", str(out), "--input-format", fmt, *model_args])
    rows = committed_rows(str(out))
    names = _names(rows)
    assert collections.Counter(names) == collections.Counter(list(expected))  # one row per input
    assert {n: r["status"] for n, r in zip(names, rows)} == expected
    assert summary["rows"] == len(expected)
    if kind == "parquet":
        assert {r["image_id"] for r in rows} == set(FILES)  # ids from the key column
    if kind == "manifest":
        assert {r["image_id"] for r in rows} == {f"id-{n}" for n in expected}
    if kind == "webdataset":  # ids are the sample keys
        assert {r["image_id"] for r in rows} == {n.split(".")[0] for n in expected}
        assert next(r for r in rows if r["image_id"] == "metaonly")["error"].startswith("sample has no image")
    assert assert_masks_match_inprocess(rows, FILES, model_args) == sum(s == "ok" for s in expected.values())
