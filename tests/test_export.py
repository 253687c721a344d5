"""Exports: COCO JSON round trip through pycocotools, PNG round trip, path safety, partial runs, S3."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from jobs.export import main as export_main
from pipeline.labels.export import join_under, read_label_png, safe_name, write_coco, write_label_pngs
from pipeline.labels.reader import open_run
from tests.consumer_fixtures import CLASSES, label_row, synthetic_run, write_run


def test_coco_json_round_trip(tmp_path):
    run_dir, labels, _ = synthetic_run(tmp_path)
    out = str(tmp_path / "export" / "coco.json")
    assert export_main([run_dir, "--coco", out]) == 0
    coco = COCO(out)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    assert len(coco.getImgIds()) == len(labels)  # failed rows are not exported
    n_anns = 0
    for img in coco.loadImgs(coco.getImgIds()):
        lab = labels[img["reslabel_image_id"]]
        assert (img["height"], img["width"]) == lab.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert sorted(a["category_id"] - 1 for a in anns) == sorted(np.unique(lab).tolist())
        for a in anns:
            m = coco.annToMask(a)
            np.testing.assert_array_equal(m, lab == a["category_id"] - 1)
            assert a["area"] == m.sum() and a["iscrowd"] == 0 and 0.2 <= a["score"] <= 1.0
            rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
            np.testing.assert_allclose(a["bbox"], mask_utils.toBbox(rle))
        n_anns += len(anns)
    assert n_anns == len({a["id"] for a in coco.dataset["annotations"]}) > 0  # unique annotation ids


def test_coco_category_and_score_filters(tmp_path):
    run_dir, labels, _ = synthetic_run(tmp_path)
    out = str(tmp_path / "dogs.json")
    assert export_main([run_dir, "--coco", out, "--categories", "dog", "--min-score", "0.0"]) == 0
    coco = COCO(out)
    assert {a["category_id"] for a in coco.dataset["annotations"]} == {3}  # dog = index 2 → COCO id 3
    assert len(coco.getImgIds()) == sum((v == 2).any() for v in labels.values())


def test_png_label_maps_round_trip(tmp_path):
    run_dir, labels, _ = synthetic_run(tmp_path)
    out = str(tmp_path / "pngs")
    assert export_main([run_dir, "--png", out]) == 0
    index = json.load(open(os.path.join(out, "label_maps.json")))
    assert index["classes"] == CLASSES and index["ignore_index"] == 255
    assert sorted(index["files"]) == sorted(labels)
    for image_id, name in index["files"].items():
        with Image.open(os.path.join(out, name)) as im:
            assert im.mode == "P" and im.size == labels[image_id].shape[::-1]
        np.testing.assert_array_equal(read_label_png(os.path.join(out, name)), labels[image_id])


def test_partial_run_is_refused_with_a_message(tmp_path, capsys):
    rows = [label_row("a", "a.png", np.zeros((4, 4), int), CLASSES)]
    run_dir = write_run(str(tmp_path / "partial"), rows, CLASSES, committed=False)
    out = tmp_path / "out.json"
    assert export_main([run_dir, "--coco", str(out)]) == 2
    assert "_SUCCESS.json" in capsys.readouterr().err and not out.exists()
    assert export_main([run_dir, "--coco", str(out), "--allow-partial"]) == 0
    assert len(COCO(str(out)).getImgIds()) == 1


HOSTILE_IDS = ["../../escape", "/etc/passwd", "a/b/../../../c", "..", ".", "", "s3://bucket/x", "C:\\win\\x",
               "nul\0byte", ".hidden", "ok-name_1.2", "ümlaut ünïcode", "a" * 500, "../" * 40]


def test_safe_names_stay_inside_the_output_prefix(tmp_path):
    names = [safe_name(i) for i in HOSTILE_IDS]
    assert len(set(names)) == len(HOSTILE_IDS)  # distinct ids stay distinct
    assert safe_name("ok-name_1.2") == "ok-name_1.2"
    for n in names:
        path = join_under(str(tmp_path), n)
        assert os.path.dirname(path) == str(tmp_path) and not n.startswith(".") and len(n) < 140
    for bad in ("..", "a/b", "", ".x"):
        with pytest.raises(ValueError):
            join_under(str(tmp_path), bad)


def test_hostile_image_ids_export_inside_prefix(tmp_path):
    rows = [label_row(i, f"src{k}.png", np.full((3, 4), k % 4), CLASSES) for k, i in enumerate(HOSTILE_IDS)]
    run_dir = write_run(str(tmp_path / "deep" / "run"), rows, CLASSES)
    out = tmp_path / "deep" / "out"
    files = write_label_pngs(open_run(run_dir), str(out))
    assert len(files) == len(HOSTILE_IDS)
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    outside = {w for w in written if not w.startswith(("deep/out/", "deep/run/"))}
    assert outside == set(), outside
    assert len(list(out.iterdir())) == len(HOSTILE_IDS) + 1  # + label_maps.json, all flat
    index = json.load(open(out / "label_maps.json"))
    for k, image_id in enumerate(HOSTILE_IDS):
        assert read_label_png(str(out / index["files"][image_id])).tolist() == np.full((3, 4), k % 4).tolist()


def test_source_stem_names_and_collisions(tmp_path):
    rows = [label_row("a", "/data/x/img1.jpg", np.zeros((2, 2), int), CLASSES),
            label_row("b", "/data/y/img1.jpg", np.ones((2, 2), int), CLASSES),
            label_row("c", "/data/z/street 7.png", np.ones((2, 2), int), CLASSES)]
    run = open_run(write_run(str(tmp_path / "run"), rows, CLASSES))
    with pytest.raises(ValueError, match="both map to img1.png"):
        write_label_pngs(run, str(tmp_path / "o1"), name_by="source_stem")
    # default: the source stem where unique, stem + image id where shared; label_maps.json names the sources
    files = write_label_pngs(run, str(tmp_path / "o2"))
    street = safe_name("street 7") + ".png"
    assert {k: os.path.basename(v) for k, v in files.items()} == {"a": "img1-a.png", "b": "img1-b.png", "c": street}
    index = json.loads((tmp_path / "o2" / "label_maps.json").read_text())
    assert index["sources"] == {"a": "/data/x/img1.jpg", "b": "/data/y/img1.jpg", "c": "/data/z/street 7.png"}
    assert index["name_by"] == "auto" and index["files"]["c"] == street
    files = write_label_pngs(run, str(tmp_path / "o3"), name_by="image_id")
    assert sorted(os.path.basename(v) for v in files.values()) == ["a.png", "b.png", "c.png"]


@pytest.fixture()
def s3_env(moto_endpoint, monkeypatch):
    """A fresh bucket on the session's S3 API (moto_server on localhost, ``tests/job_fixtures.py``), reachable
    through fsspec/s3fs via the environment. Yields the bucket's name."""
    import uuid

    import fsspec

    from tests.job_fixtures import s3_client

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    bucket = f"export-{uuid.uuid4().hex[:8]}"
    s3_client(moto_endpoint).create_bucket(Bucket=bucket)
    fsspec.filesystem("s3").clear_instance_cache()
    yield bucket
    fsspec.filesystem("s3").clear_instance_cache()  # no cached client may outlive this endpoint setting


def test_s3_run_exports_to_s3(tmp_path, s3_env):
    import fsspec

    run_dir, labels, _ = synthetic_run(tmp_path)
    fs = fsspec.filesystem("s3")
    fs.put(run_dir + "/", f"{s3_env}/out/runs/test-run/", recursive=True)
    run = open_run(f"s3://{s3_env}/out/runs/test-run")
    assert run.committed and len(run.files) == 2
    write_coco(run, f"s3://{s3_env}/exports/coco.json")
    write_label_pngs(run, f"s3://{s3_env}/exports/png")
    local = tmp_path / "coco.json"
    fs.get(f"{s3_env}/exports/coco.json", str(local))
    coco = COCO(str(local))
    for a in coco.dataset["annotations"]:
        img = coco.imgs[a["image_id"]]
        np.testing.assert_array_equal(coco.annToMask(a), labels[img["reslabel_image_id"]] == a["category_id"] - 1)
    for image_id, lab in labels.items():
        np.testing.assert_array_equal(read_label_png(f"s3://{s3_env}/exports/png/{image_id}.png"), lab)
