"""pipeline.labels.rle and pipeline.labels.segments: pycocotools round trips, string counts, areas, boxes."""
from __future__ import annotations

import json

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.labels.rle import decode_rle, encode_mask, rle_area, rle_bbox
from pipeline.labels.segments import segments_from_labels


def test_round_trip_and_str_counts():
    rng = np.random.default_rng(0)
    m = rng.random((37, 53)) > 0.6
    rle = encode_mask(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    json.dumps(rle)  # COCO-JSON compatible
    assert np.array_equal(decode_rle(rle), m.astype(np.uint8))
    assert rle_area(rle) == int(m.sum())
    # pycocotools accepts the stored form directly
    assert np.array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"]}), m.astype(np.uint8))


def test_bbox_xywh():
    m = np.zeros((10, 20), bool)
    m[2:5, 3:9] = True
    assert rle_bbox(encode_mask(m)) == [3.0, 2.0, 6.0, 3.0]


def test_segments_one_per_present_class_background_excluded():
    labels = np.zeros((8, 10), np.int32)
    labels[:4, :5] = 2
    labels[6:, 8:] = 3
    scores = np.array([0.9, np.nan, 0.7, 0.4], np.float32)
    segs = segments_from_labels(labels, ["bg", "cat", "dog", "person"], scores, exclude=[0])
    assert [s["category_id"] for s in segs] == [2, 3]
    dog = segs[0]
    assert dog["category_name"] == "dog" and dog["area"] == 20 and dog["bbox"] == [0.0, 0.0, 5.0, 4.0]
    assert abs(dog["score"] - 0.7) < 1e-6 and abs(dog["pixel_fraction"] - 20 / 80) < 1e-9
    assert np.array_equal(decode_rle(dog["rle"]), (labels == 2).astype(np.uint8))
    assert len(segments_from_labels(labels, ["bg", "cat", "dog", "person"], scores)) == 3


def test_segments_fit_schema():
    import datetime

    from schemas import make_row, rows_to_table

    labels = np.array([[0, 1], [1, 1]], np.int32)
    segs = segments_from_labels(labels, ["a", "b"], np.array([0.5, 0.6], np.float32))
    row = make_row(image_id="x", source_uri="/x.png", width=2, height=2, status="ok", segments=segs,
                   method="m", base="b", preset="p", model="m", weights_digest="d", vocabulary_hash="v",
                   segmenter_hash="s", job_hash="c", code_version="0", run_id="r",
                   labeled_at=datetime.datetime.now(datetime.timezone.utc))
    assert rows_to_table([row]).num_rows == 1


def test_background_ids_policy():
    from pipeline.labels.segments import background_ids

    assert background_ids("voc21", ["sky", "aeroplane"]) == [0]
    assert background_ids("/x/custom.txt", ["sky", "cat"]) == []
    assert background_ids("/x/custom.txt", ["cat", "Background"]) == [1]
    assert background_ids("voc21", ["sky", "aeroplane"], "none") == []
    assert background_ids("/x/c.txt", ["sky", "cat"], "cat") == [1]
    import pytest

    with pytest.raises(ValueError, match="not in the vocabulary"):
        background_ids("/x/c.txt", ["sky", "cat"], "dog")
