"""Consumers on real job output: a run written by ``jobs.label`` (local Ray, tiny model) is read back equal to
the in-process segmenter, exported to COCO/PNG losslessly, and drawn as a contact sheet."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from jobs.export import main as export_main
from jobs.overlay import main as overlay_main
from pipeline.io.decode import decode_image
from pipeline.labels.export import read_label_png
from pipeline.labels.reader import open_run
from tests.job_fixtures import run_cli, sample_files

pytestmark = pytest.mark.slow


def test_real_run_reads_exports_and_draws(ray_local, image_dir, model_args, tmp_path):
    import torch

    from jobs.label import config_from_args
    from pipeline.segmenter import Segmenter

    out = tmp_path / "out"
    summary = run_cli(["--input", str(image_dir), "--output", str(out), "--background", "sky", *model_args])
    run = open_run(str(out / "runs" / summary["run_id"]))
    assert run.categories == ["sky", "cat", "dog", "person"]
    assert run.excluded_category_ids == [0] and run.background_fill() == 0
    assert len(list(run.rows())) == len(sample_files())

    cfg = config_from_args(["--input", "x", "--output", "y", *model_args])
    torch.set_num_threads(1)  # as in the actor: identical float reductions
    seg = Segmenter.build(cfg.segmenter_config(), cfg.model_config())
    files = {n: d for n, (d, _) in sample_files().items()}
    maps = {}
    for row, lab in run.label_maps(fill=run.background_fill()):
        name = row["source_uri"].rsplit("/", 1)[-1]
        np.testing.assert_array_equal(lab, seg.segment([decode_image(files[name]).image])[0].labels, err_msg=name)
        maps[row["image_id"]] = lab
    assert len(maps) == sum(s == "ok" for _, s in sample_files().values())

    coco_path = str(tmp_path / "coco.json")
    png_dir = str(tmp_path / "png")
    assert export_main([run.uri, "--coco", coco_path, "--png", png_dir, "--fill-excluded"]) == 0
    coco = COCO(coco_path)
    assert len(coco.getImgIds()) == len(maps)
    for a in coco.dataset["annotations"]:
        image_id = coco.imgs[a["image_id"]]["reslabel_image_id"]
        np.testing.assert_array_equal(coco.annToMask(a), maps[image_id] == a["category_id"] - 1)
    assert all(a["category_id"] != 1 for a in coco.dataset["annotations"])  # "sky" was dropped by the job
    index = json.load(open(os.path.join(png_dir, "label_maps.json")))
    assert index["unlabeled_value"] == 0
    for image_id, name in index["files"].items():
        np.testing.assert_array_equal(read_label_png(os.path.join(png_dir, name)), maps[image_id])

    sheet = str(tmp_path / "sheet.png")
    assert overlay_main(["--run", run.uri, "--out", sheet, "--n", "8", "--thumb", "128", "--fill-excluded"]) == 0
    with Image.open(sheet) as im:
        assert im.size == (4 * 128 + 300, 2 * (128 + 20))
