"""Overlays: exact blending, sizes of the one-image overlay and the contact sheet, both CLI modes."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from jobs.overlay import main as overlay_main
from pipeline.labels.overlay import blend, contact_sheet, overlay_image, palette, pixel_share
from tests.consumer_fixtures import CLASSES, label_row, save_png, write_run


def photo_labels(image: np.ndarray, num_classes: int = len(CLASSES)) -> np.ndarray:
    """A plausible-looking label map for a real photo: brightness quantised into ``num_classes`` bands."""
    grey = image.astype(np.float32).mean(axis=2)
    edges = np.quantile(grey, np.linspace(0, 1, num_classes + 1)[1:-1])
    return np.digitize(grey, edges).astype(np.int32)


def photo_run(tmp_path, exclude=()):
    from skimage import data

    pics = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
            "rocket": data.rocket(), "hubble": data.hubble_deep_field()[::2, ::2]}
    rows = []
    for name, img in pics.items():
        path = save_png(str(tmp_path / "photos" / f"{name}.png"), img)
        rows.append(label_row(f"id-{name}", path, photo_labels(img), CLASSES, exclude=exclude))
    return write_run(str(tmp_path / "runs" / "photos"), rows, CLASSES), pics


def test_palette_is_distinct_and_deterministic():
    p = palette(171)
    assert p.shape == (171, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 171 and np.array_equal(p, palette(171))


def test_blend_is_exact_and_leaves_unlabelled_pixels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    lab = rng.integers(0, 3, (6, 7))
    lab[0, 0] = 255
    colors = palette(3)
    out = blend(img, lab, colors, alpha=0.25, edges=False)
    np.testing.assert_array_equal(out[0, 0], img[0, 0])
    expect = np.round(0.75 * img[2, 3].astype(np.float32) + 0.25 * colors[lab[2, 3]]).astype(np.uint8)
    np.testing.assert_array_equal(out[2, 3], expect)
    with pytest.raises(ValueError, match="differ"):
        blend(img, lab[:5], colors)


def test_overlay_and_sheet_sizes():
    img = np.zeros((50, 80, 3), np.uint8)
    lab = np.zeros((50, 80), np.int32)
    lab[:, 40:] = 2
    share = pixel_share([lab], 4)
    assert share.tolist() == [0.5, 0.0, 0.5, 0.0]
    one = overlay_image(img, lab, CLASSES, title="t")
    assert one.size == (80 + 300, max(50 + 20, 28 + 2 * 20 + 8))
    sheet = contact_sheet([(img, lab, "a")] * 5, CLASSES, cols=2, thumb=64)
    assert sheet.size == (2 * 64 + 300, 3 * (64 + 20))


def test_contact_sheet_cli(tmp_path):
    run_dir, pics = photo_run(tmp_path)
    out = str(tmp_path / "sheet.png")
    assert overlay_main(["--run", run_dir, "--out", out, "--n", "4", "--cols", "2", "--thumb", "200"]) == 0
    with Image.open(out) as im:
        assert im.size == (2 * 200 + 300, 2 * (200 + 20)) and im.mode == "RGB"
        px = np.asarray(im)
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 1000  # photos, not a blank canvas
    by_dir = str(tmp_path / "sheet2.png")
    assert overlay_main(["--run", run_dir, "--out", by_dir, "--n", "9", "--images", str(tmp_path / "photos")]) == 0
    with Image.open(by_dir) as im:  # 5 images → 2 rows of 4 at the default 256 px
        assert im.size == (4 * 256 + 300, 2 * (256 + 20))
    os.remove(os.path.join(run_dir, "_SUCCESS.json"))
    assert overlay_main(["--run", run_dir, "--out", str(tmp_path / "x.png")]) == 2


def test_one_image_cli(tmp_path, tiny_arch, tiny_weights, tiny_vocab_file, tiny_templates_file):
    from skimage import data

    cat = data.chelsea()[::2, ::2]  # 150 x 226
    src = save_png(str(tmp_path / "cat.png"), cat)
    out = str(tmp_path / "cat-overlay.png")
    cache = tmp_path / "text-cache"
    args = ["--image", src, "--preset", "voc21", "--model", tiny_arch, "--weights", tiny_weights,
            "--vocabulary", tiny_vocab_file, "--templates", tiny_templates_file, "--set", "resize_short=112",
            "--text-cache", str(cache), "--out", out]
    assert overlay_main(args) == 0
    with Image.open(out) as im:
        assert im.size[0] == cat.shape[1] + 300 and im.size[1] >= cat.shape[0] + 20
        first = np.asarray(im)
    assert len(list(cache.glob("*.safetensors"))) == 1  # the next try of this vocabulary skips the text tower
    assert overlay_main(args) == 0
    with Image.open(out) as im:
        np.testing.assert_array_equal(np.asarray(im), first)


def test_random_weights_runs_carry_a_banner(tmp_path, tiny_arch, tiny_vocab_file, tiny_templates_file):
    """A contact sheet of a random-weights run and a one-image overlay with --random-weights start with the red
    RANDOM WEIGHTS strip; a run on real weights does not."""
    import json

    from pipeline.labels.overlay import BANNER_BG

    run_dir, _ = photo_run(tmp_path)
    plain = str(tmp_path / "plain.png")
    assert overlay_main(["--run", run_dir, "--out", plain, "--n", "2", "--cols", "2", "--thumb", "64"]) == 0
    success = os.path.join(run_dir, "_SUCCESS.json")
    manifest = json.load(open(success))
    manifest["provenance"] = {"weights_digest": "random:tiny:seed0"}
    json.dump(manifest, open(success, "w"))
    marked = str(tmp_path / "marked.png")
    assert overlay_main(["--run", run_dir, "--out", marked, "--n", "2", "--cols", "2", "--thumb", "64"]) == 0
    with Image.open(plain) as a, Image.open(marked) as b:
        assert b.width == a.width and b.height > a.height
        assert tuple(np.asarray(b)[2, 2]) == BANNER_BG and tuple(np.asarray(a)[2, 2]) != BANNER_BG
        np.testing.assert_array_equal(np.asarray(b)[b.height - a.height:], np.asarray(a))  # the sheet, unchanged

    from skimage import data

    src = save_png(str(tmp_path / "cat.png"), data.chelsea()[::4, ::4])
    out = str(tmp_path / "cat.png.overlay.png")
    assert overlay_main(["--image", src, "--preset", "voc21", "--model", tiny_arch, "--random-weights",
                         "--vocabulary", tiny_vocab_file, "--templates", tiny_templates_file,
                         "--set", "resize_short=112", "--text-cache", "none", "--out", out]) == 0
    with Image.open(out) as im:
        assert tuple(np.asarray(im)[2, 2]) == BANNER_BG
