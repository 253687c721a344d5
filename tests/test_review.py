"""The review queue (``python -m jobs.export --review N``): Label Studio tasks of the least confident images with
the labels as brush predictions. The brush RLE is checked against Label Studio's own converter package
(``label_studio_converter``: its decoder, and its BRUSH_TO_PNG export of the tasks once the predictions are
accepted as annotations), and the corrected masks read back."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jobs.export import main as export_main
from pipeline.labels.reader import label_map, open_run
from pipeline.labels.review import (
    IGNORED_LABEL,
    corrected_label_maps,
    decode_brush_rle,
    encode_brush_rle,
    row_confidence,
    select_rows,
)
from tests.consumer_fixtures import CLASSES, synthetic_run

brush = pytest.importorskip("label_studio_converter.brush")  # a test dependency (pyproject.toml)


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48), (300, 400)])
def test_brush_rle_matches_label_studio_decoder(shape):
    rng = np.random.default_rng(shape[0])
    mask = np.zeros(shape, bool)
    mask[rng.integers(0, shape[0], 3).min():, : max(1, shape[1] // 2)] = True
    mask ^= rng.random(shape) < 0.05
    rle = encode_brush_rle(mask)
    decoded = brush.decode_rle(rle).reshape(shape[0], shape[1], 4)  # Label Studio's decoder
    assert np.array_equal(decoded[:, :, 3] > 0, mask) and (decoded[mask] == 255).all()
    assert np.array_equal(decode_brush_rle(rle, *shape), mask)
    # and ours reads what Label Studio writes (its encoder uses literal and repeat chunks)
    theirs = brush.mask2rle((mask * 255).astype(np.uint8))
    assert np.array_equal(decode_brush_rle(theirs, *shape), mask)
    big = np.ones((300, 300), bool)  # a run longer than one 16-bit chunk
    assert np.array_equal(brush.decode_rle(encode_brush_rle(big)).reshape(300, 300, 4)[:, :, 3] > 0, big)


def test_review_queue_round_trips_through_label_studio_converter(tmp_path, capsys):
    from label_studio_converter import Converter

    run_dir, labels, _ = synthetic_run(tmp_path, n_ok=6, n_failed=1)
    run = open_run(run_dir)
    rows = {r["image_id"]: r for r in run.rows(status="ok")}
    out = tmp_path / "review" / "tasks.json"
    assert export_main([run_dir, "--review", "3", "--review-per-class", "1", "--review-out", str(out),
                        "--review-image-url", "/data/local-files/?d=photos/{name}"]) == 0
    assert "Label Studio tasks" in capsys.readouterr().out
    tasks = json.loads(out.read_text())
    config = (tmp_path / "review" / "label_config.xml").read_text()
    # the 3 least confident, then per class the least confident image containing it; least confident first
    conf = {i: row_confidence(r) for i, r in rows.items()}
    ids = [t["data"]["reslabel_image_id"] for t in tasks]
    lowest = sorted(conf, key=conf.get)[:3]
    per_class = {min((i for i, r in rows.items() if any(s["category_id"] == c for s in r["segments"])),
                     key=conf.get) for c in range(len(CLASSES))}
    assert set(ids) == set(lowest) | per_class and ids == sorted(ids, key=conf.get) and len(ids) == len(set(ids))
    assert [c for c, _ in select_rows(run, 3, 1)] == sorted(conf[i] for i in ids)
    for t in tasks:
        assert t["data"]["image"] == "/data/local-files/?d=photos/" + os.path.basename(t["data"]["source_uri"])
        assert t["predictions"][0]["score"] == pytest.approx(conf[t["data"]["reslabel_image_id"]])
        for r in t["predictions"][0]["result"]:
            assert f'value="{r["value"]["brushlabels"][0]}"' in config

    # a reviewer accepts the predictions (Label Studio copies them into an annotation) and exports the project
    export = []
    for k, t in enumerate(tasks, start=1):
        export.append({"id": k, "data": t["data"], "annotations": [
            {"id": 100 + k, "completed_by": 1, "created_at": "2026-12-05T09:00:00Z", "was_cancelled": False,
             "result": t["predictions"][0]["result"]}]})
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(export))
    png_dir = tmp_path / "ls-png"
    png_dir.mkdir()
    Converter(config=config, project_dir=str(tmp_path)).convert(str(export_file), str(png_dir), "BRUSH_TO_PNG",
                                                                is_dir=False)
    from PIL import Image

    for k, t in enumerate(tasks, start=1):  # Label Studio's own converter gives back every stored mask
        row = rows[t["data"]["reslabel_image_id"]]
        lab = labels[row["image_id"]]
        for seg in row["segments"]:
            name = f"task-{k}-annotation-{100 + k}-by-1-label-{seg['category_name']}-0.png"
            png = np.asarray(Image.open(png_dir / name)) > 0
            assert np.array_equal(png, lab == seg["category_id"]), name

    # reading corrected masks back: a reviewer repaints one image's "dog" brush as "cat"
    target = next(t for t in export if any(r["value"]["brushlabels"] == ["dog"] for r in t["annotations"][0]["result"]))
    for r in target["annotations"][0]["result"]:
        if r["value"]["brushlabels"] == ["dog"]:
            r["value"]["brushlabels"] = ["cat"]
    export_file.write_text(json.dumps(export))
    got = dict(corrected_label_maps(str(export_file), CLASSES))
    assert set(got) == set(ids)
    for image_id, corrected in got.items():
        expected = label_map(rows[image_id])
        if image_id == target["data"]["reslabel_image_id"]:
            expected = np.where(expected == CLASSES.index("dog"), CLASSES.index("cat"), expected)
        assert np.array_equal(corrected, expected), image_id

    # the recipe of docs/consumers.md, as written: the corrected maps replace the exported PNGs
    import pathlib
    import re

    from pipeline.labels.export import read_label_png

    text = (pathlib.Path(__file__).parent.parent / "docs" / "consumers.md").read_text()
    (block,) = re.findall(r"<!-- review-snippet -->\n```python\n(.*?)```", text, flags=re.S)
    png_dir = tmp_path / "png"
    exec(compile(block, "docs/consumers.md", "exec"),
         {"RUN": run_dir, "PNG_DIR": str(png_dir), "EXPORT_JSON": str(export_file)})
    assert f"corrected {len(ids)} label maps" in capsys.readouterr().out
    index = json.loads((png_dir / "label_maps.json").read_text())
    for image_id, name in index["files"].items():
        expected = got.get(image_id, label_map(rows[image_id]))
        assert np.array_equal(read_label_png(str(png_dir / name)), expected.astype(np.uint8)), image_id


def test_review_tasks_carry_ignore_regions(tmp_path):
    from tests.consumer_fixtures import review_run

    run_dir, _ = review_run(tmp_path)
    run = open_run(run_dir)
    out = tmp_path / "tasks.json"
    assert export_main([run_dir, "--review", "10", "--review-out", str(out)]) == 0
    tasks = json.loads(out.read_text())
    assert len(tasks) == 6  # every ok row (none lacks a confidence), the failed one never
    assert f'value="{IGNORED_LABEL}"' in (tmp_path / "label_config.xml").read_text()
    rows = {r["image_id"]: r for r in run.rows(status="ok")}
    for t in tasks:
        row = rows[t["data"]["reslabel_image_id"]]
        ign = [r for r in t["predictions"][0]["result"] if r["value"]["brushlabels"] == [IGNORED_LABEL]]
        assert len(ign) == 1
        h, w = row["height"], row["width"]
        from pipeline.labels.reader import ignore_mask

        assert np.array_equal(decode_brush_rle(ign[0]["value"]["rle"], h, w), ignore_mask(row))
    with pytest.raises(SystemExit):
        export_main([run_dir, "--review", "3"])  # no --review-out
