"""Where the eight benchmarks keep images and ground truth (mmseg layouts), and how GT is read.

The table is data: one ``Benchmark`` per preset name. ``root`` is the directory mmseg calls
``data_root`` (e.g. ``VOCdevkit/VOC2012``). Ground-truth PNGs hold class indices per pixel, 255 =
ignore. ``reduce_zero_label`` benchmarks store 0 = "other/background" and classes from 1; loading
maps 0 → 255 and k → k−1 (docs/method.md §1.7). Sources: the official ResCLIP/NACLIP configs and
mmseg's dataset classes (suffixes, split files).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from pipeline.evaluation.metrics import LabelError, check_labels, reduce_zero_label


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark's mmseg layout, relative to its ``data_root``."""

    name: str  # also the preset / vocabulary name
    num_classes: int
    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_suffix: str
    split: Optional[str]  # file listing image stems, one per line; None: every image under img_dir
    reduce_zero_label: bool
    data_root_hint: str  # the usual mmseg path, for messages and docs


_VOC = dict(img_dir="JPEGImages", ann_dir="SegmentationClass", img_suffix=".jpg", seg_suffix=".png",
            split="ImageSets/Segmentation/val.txt", data_root_hint="data/VOCdevkit/VOC2012")
_CTX = dict(img_dir="JPEGImages", ann_dir="SegmentationClassContext", img_suffix=".jpg", seg_suffix=".png",
            split="ImageSets/SegmentationContext/val.txt", data_root_hint="data/VOCdevkit/VOC2010")

BENCHMARKS: Dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("voc21", 21, **_VOC, reduce_zero_label=False),
        Benchmark("voc20", 20, **_VOC, reduce_zero_label=True),
        Benchmark("context60", 60, **_CTX, reduce_zero_label=False),
        Benchmark("context59", 59, **_CTX, reduce_zero_label=True),
        Benchmark("coco_object", 81, "images/val2017", "annotations/val2017", ".jpg", "_instanceTrainIds.png",
                  None, False, "data/coco_object"),
        Benchmark("coco_stuff", 171, "images/val2017", "annotations/val2017", ".jpg", "_labelTrainIds.png",
                  None, False, "data/coco_stuff164k"),
        Benchmark("cityscapes", 19, "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                  "_gtFine_labelTrainIds.png", None, False, "data/cityscapes"),
        Benchmark("ade20k", 150, "images/validation", "annotations/validation", ".jpg", ".png",
                  None, True, "data/ade/ADEChallengeData2016"),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """Look a benchmark up by preset name; ``KeyError`` lists the valid names."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}") from None


def list_pairs(bench: Benchmark, root: str, limit: Optional[int] = None) -> List[Tuple[str, str, str]]:
    """(stem, image path, GT path) for the validation set under ``root``, sorted by stem.

    The stem is the image path relative to ``img_dir`` without ``img_suffix`` (Cityscapes keeps its
    city folder: ``frankfurt/frankfurt_000000_000294``). Raises ``FileNotFoundError`` with the
    expected layout when the image folder is missing.
    """
    img_root = os.path.join(root, bench.img_dir)
    if not os.path.isdir(img_root):
        raise FileNotFoundError(
            f"{img_root} not found: {bench.name} expects {bench.img_dir}/*{bench.img_suffix} and "
            f"{bench.ann_dir}/*{bench.seg_suffix} under its data root (usually {bench.data_root_hint})"
        )
    if bench.split and os.path.isfile(os.path.join(root, bench.split)):
        with open(os.path.join(root, bench.split)) as f:
            stems = sorted(line.strip() for line in f if line.strip())
    else:
        stems = sorted(_scan(img_root, bench.img_suffix))
    if limit is not None:
        stems = stems[:limit]
    return [
        (s, os.path.join(img_root, s + bench.img_suffix), os.path.join(root, bench.ann_dir, s + bench.seg_suffix))
        for s in stems
    ]


def _scan(img_root: str, suffix: str) -> List[str]:
    stems = []
    for dirpath, _, files in os.walk(img_root):
        for fn in files:
            if fn.endswith(suffix):
                rel = os.path.relpath(os.path.join(dirpath, fn), img_root)
                stems.append(rel[: -len(suffix)].replace(os.sep, "/"))
    return stems


def load_gt(bench: Benchmark, path: str, image_hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Read one GT PNG as the evaluation sees it.

    Args:
        path: label PNG (palette or grey), one class index per pixel.
        image_hw: (height, width) of the matching image; a different GT size is a ``LabelError``.
    Returns:
        (H, W) uint8, values in ``[0, num_classes)`` or 255, after ``reduce_zero_label`` if the
        benchmark uses it. Values outside the vocabulary raise ``LabelError`` naming ``path``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ground truth {path} not found")
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise LabelError(f"{path}: ground truth must be a single-channel label PNG, got mode {im.mode}")
        gt = np.asarray(im)
    if image_hw is not None and tuple(gt.shape[:2]) != tuple(image_hw):
        raise LabelError(f"{path}: ground truth is {gt.shape[1]}x{gt.shape[0]} (WxH) but its image is "
                         f"{image_hw[1]}x{image_hw[0]}")
    if bench.reduce_zero_label:
        check_labels(gt, bench.num_classes + 1, path)  # on disk: 0 = other, 1..C = classes, 255
        gt = reduce_zero_label(gt)
    check_labels(gt, bench.num_classes, path)
    return gt.astype(np.uint8)
