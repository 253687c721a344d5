"""mIoU protocol: dataset-accumulated IoU, ignore 255, reduce_zero_label, NaN classes, bad labels."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.metrics import IoUAccumulator, LabelError, confusion_matrix, markdown_table, reduce_zero_label

NAMES = ["a", "b", "c"]


def _two_images():
    gt_a, pred_a = np.array([[0, 0, 0, 0, 1, 1, 1, 1]]), np.array([[0, 0, 0, 1, 1, 1, 1, 1]])
    gt_b, pred_b = np.array([[2, 2, 1, 1, 255, 255]]), np.array([[2, 1, 1, 1, 0, 2]])
    return (pred_a, gt_a), (pred_b, gt_b)


def test_known_values_accumulated_over_the_dataset():
    acc = IoUAccumulator(NAMES)
    for k, (pred, gt) in enumerate(_two_images()):
        acc.update(pred, gt, name=f"im{k}")
    s = acc.scores()
    # class a: I=3 U=4; b: I=4+2 U=5+3; c: I=1 U=2 (the pixels under gt 255 are not counted)
    assert [c["IoU"] for c in s["per_class"]] == pytest.approx([75.0, 75.0, 50.0])
    assert s["mIoU"] == pytest.approx(200 / 3)
    assert s["aAcc"] == pytest.approx(100 * 10 / 12)
    assert s["mAcc"] == pytest.approx(100 * (3 / 4 + 1 + 1 / 2) / 3)
    assert s["num_pixels"] == 12 and s["num_images"] == 2
    per_image = []
    for pred, gt in _two_images():
        one = IoUAccumulator(NAMES)
        one.update(pred, gt)
        per_image.append(one.scores()["mIoU"])
    assert np.mean(per_image) == pytest.approx((77.5 + 175 / 3) / 2)  # what per-image averaging would give
    assert abs(np.mean(per_image) - s["mIoU"]) > 1  # ... and the protocol does not do that


def test_absent_class_is_skipped_and_false_positive_class_scores_zero():
    acc = IoUAccumulator(["x", "y", "z", "w"])
    acc.update(np.array([[0, 0, 2, 2]]), np.array([[0, 0, 1, 1]]))
    iou = [c["IoU"] for c in acc.scores()["per_class"]]
    assert iou == [100.0, 0.0, 0.0, None]  # y: missed, z: only predicted, w: nowhere → excluded
    assert acc.scores()["mIoU"] == pytest.approx(100 / 3)


def test_all_ignored_gives_no_score():
    acc = IoUAccumulator(NAMES)
    acc.update(np.zeros((2, 2), int), np.full((2, 2), 255))
    s = acc.scores()
    assert s["mIoU"] is None and s["aAcc"] is None and s["num_pixels"] == 0


def test_matches_a_direct_count_on_random_maps():
    rng = np.random.default_rng(0)
    c = 7
    preds = [rng.integers(0, c, (20 + i, 30)) for i in range(5)]
    gts = [np.where(rng.random(p.shape) < 0.1, 255, np.where(rng.random(p.shape) < 0.6, p, rng.integers(0, c, p.shape)))
           for p in preds]
    acc = IoUAccumulator([str(i) for i in range(c)])
    for p, g in zip(preds, gts):
        acc.update(p, g)
    p_all = np.concatenate([p.ravel() for p in preds])
    g_all = np.concatenate([g.ravel() for g in gts])
    keep = g_all != 255
    expect = [((p_all == k) & (g_all == k) & keep).sum() / (((p_all == k) | (g_all == k)) & keep).sum()
              for k in range(c)]
    got = [x["IoU"] / 100 for x in acc.scores()["per_class"]]
    assert got == pytest.approx(expect)
    assert acc.scores()["aAcc"] / 100 == pytest.approx((p_all == g_all)[keep].mean())


def test_reduce_zero_label():
    gt = np.array([[0, 1, 2, 150, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(reduce_zero_label(gt), [[255, 0, 1, 149, 255]])
    # evaluated with reduce_zero_label: old 0 pixels are ignored whatever is predicted there
    acc = IoUAccumulator(["first", "second"])
    acc.update(np.array([[1, 0, 1, 1]]), reduce_zero_label(np.array([[0, 1, 2, 0]])))
    assert [c["IoU"] for c in acc.scores()["per_class"]] == [100.0, 100.0]


def test_bad_labels_name_the_file():
    with pytest.raises(LabelError, match=r"gt_007.png \(ground truth\): label values \[3, 9\]"):
        confusion_matrix(np.zeros((1, 3), int), np.array([[3, 9, 255]]), 3, name="gt_007.png")
    with pytest.raises(LabelError, match="prediction"):
        confusion_matrix(np.array([[5, 0]]), np.array([[0, 0]]), 3)
    with pytest.raises(LabelError, match="shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 3, name="x")


def test_markdown_table():
    acc = IoUAccumulator(NAMES)
    for pred, gt in _two_images():
        acc.update(pred, gt)
    md = markdown_table(acc.scores(), title="toy")
    assert "## toy" in md and "| 2 | 12 | 66.67 | 75.00 | 83.33 |" in md and "| 2 | c | 50.00 | 50.00 | 2 |" in md


def test_unlabeled_predictions_count_as_misses():
    acc = IoUAccumulator(["x", "y"], allow_unlabeled_pred=True)
    acc.update(np.array([[0, 255, 1, 255]]), np.array([[0, 0, 1, 255]]))
    # x: I=1, gt=2 (one pixel unlabeled), pred=1 → 50 %; y: 100 %; the (255, 255) pixel is ignored
    assert [c["IoU"] for c in acc.scores()["per_class"]] == [50.0, 100.0]
    assert acc.scores()["aAcc"] == pytest.approx(200 / 3)
    with pytest.raises(LabelError, match="prediction"):
        IoUAccumulator(["x", "y"]).update(np.array([[255]]), np.array([[0]]))
