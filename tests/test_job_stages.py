"""The job's stages without Ray: decoded pixels travel as one buffer (the smaller of decoded and resized), and the
writer commits only whole shards with unique ids, once."""
from __future__ import annotations

import datetime
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.inputs import INDEX_SCHEMA, entry
from jobs.stages import pixel_column, read_decode, write_parts
from pipeline import get_preset
from pipeline.method.preprocess import resize_for_config
from schemas import layout, make_row, rows_to_table


def test_pixel_column_is_one_buffer_with_nulls():
    a = pixel_column([np.arange(6, dtype=np.uint8).reshape(1, 2, 3), None, np.full((1, 1, 3), 7, np.uint8)])
    assert a.type == pa.large_binary() and a.null_count == 1
    assert a.to_pylist() == [bytes(range(6)), None, b"\x07\x07\x07"]
    assert pixel_column([]).to_pylist() == []


def _png(path, size):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return str(path)


def test_read_decode_ships_the_smaller_image(tmp_path):
    cfg = get_preset("voc21")  # short side 336
    small, large = _png(tmp_path / "small.png", (100, 80)), _png(tmp_path / "large.png", (1000, 800))
    rows = pa.Table.from_pylist([entry("s", small, small), entry("l", large, large)], schema=INDEX_SCHEMA)
    rows = rows.append_column("_shard", pa.array([0, 0], pa.int32()))
    out = {r["image_id"]: r
           for r in read_decode(rows, seg_config=cfg, bytes_column="jpg", max_pixels=10**7).to_pylist()}
    s, big = out["s"], out["l"]
    assert (s["ph"], s["pw"], s["rh"], s["rw"]) == (80, 100, 336, 420)  # enlarging: the decoded 100x80 travels
    assert (big["ph"], big["pw"]) == (big["rh"], big["rw"]) == (336, 420)  # shrinking: resized here
    decoded = np.asarray(Image.open(large).convert("RGB"))
    assert np.frombuffer(big["pixels"], np.uint8).reshape(336, 420, 3).tobytes() == \
        resize_for_config(decoded, cfg).tobytes()
    assert len(s["pixels"]) == 80 * 100 * 3


LABELED_AT = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def _label_rows(ids, shard, shard_rows):
    rows = rows_to_table([make_row(image_id=i, source_uri=f"/x/{i}", status="empty", error="zero bytes", run_id="r",
                                   method="m", base="b", preset="p", model="x", weights_digest="w",
                                   vocabulary_hash="v", segmenter_hash="s", job_hash="c", code_version="0",
                                   labeled_at=LABELED_AT)
                          for i in ids])
    n = len(ids)
    extra = {"_shard": pa.array([shard] * n, pa.int32()), "_shard_rows": pa.array([shard_rows] * n, pa.int32()),
             **{c: pa.array([0.5] * n, pa.float64()) for c in ("_t_read", "_t_decode", "_t_segment", "_t_encode")}}
    for name, col in extra.items():
        rows = rows.append_column(name, col)
    return rows


def test_write_parts_commits_whole_shards_once(tmp_path):
    run = str(tmp_path / "run")
    block = pa.concat_tables([_label_rows(["b", "a"], 3, 2), _label_rows(["c"], 4, 1)])
    results = write_parts(block, run=run, metadata={layout.META_RUN_ID: "r"})
    assert [(r["shard"], r["name"], r["rows"], r["written"]) for r in results] == [
        (3, "part-00003.parquet", 2, True), (4, "part-00004.parquet", 1, True)]
    stats = json.loads(results[0]["stats"])
    assert stats["by_status"] == {"empty": 2} and stats["stage_seconds"]["read"] == 1.0
    part = pq.read_table(tmp_path / "run" / "part-00003.parquet")
    assert part.column("image_id").to_pylist() == ["a", "b"]  # sorted, private columns stripped
    assert json.loads(part.schema.metadata[layout.META_PART_STATS.encode()]) == stats
    first = _label_rows(["b", "a"], 3, 2)
    status = first.schema.get_field_index("status")
    relabeled = first.set_column(status, first.schema.field(status), pa.array(["read_error"] * 2))
    retried = pa.concat_tables([relabeled, _label_rows(["c"], 4, 1)])  # a retry whose rows came out differently
    again = write_parts(retried, run=run, metadata={layout.META_RUN_ID: "r"})
    assert [r["written"] for r in again] == [False, False]  # a retried call keeps the committed parts ...
    assert json.loads(again[0]["stats"])["by_status"] == {"empty": 2}  # ... and reports what they hold


@pytest.mark.parametrize("ids, expected", [(["a"], 2), (["a", "a"], 2)])
def test_write_parts_refuses_a_partial_or_repeated_shard(tmp_path, ids, expected):
    with pytest.raises(RuntimeError, match="shard 0: .* planned images"):
        write_parts(_label_rows(ids, 0, expected), run=str(tmp_path), metadata={})
    assert not list(tmp_path.glob("part-*"))
