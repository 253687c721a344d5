"""Exports of a committed run: COCO annotations JSON and palette-PNG label maps.

Output goes to a local path or s3:// URI, taken literally (``pipeline.io.uri``). File names derived from
image ids go through ``safe_name`` and ``join_under``: whatever an id contains (``../``, ``/abs``,
``s3://``, NUL), no file is written outside the chosen output prefix.

Conventions:
* COCO: image ``id`` = 1..N in run order, ``category_id`` = run class index + 1 (COCO ids start at 1;
  ``reslabel_index`` keeps the run's index), ``segmentation`` = the stored compressed RLE (utf-8),
  ``iscrowd`` 0, ``area``/``bbox`` (XYWH, pixels) and ``score`` as stored. Only ``ok`` rows.
* PNG: one 8-bit palette PNG per ``ok`` image, pixel value = class index ``0..C-1``; 255 = no
  segment covers the pixel (use it as mmseg's ``ignore_index``). ``label_maps.json`` next to them
  lists classes, the ignore value and the image id → file mapping.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import re
from typing import Any, Dict, Iterator, List

import numpy as np
from PIL import Image

from pipeline.io import uri as uris
from pipeline.labels.overlay import palette
from pipeline.labels.reader import UNLABELED, Run, label_map
from schemas import SCHEMA_VERSION

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
PNG_INDEX = "label_maps.json"


def safe_name(image_id: str, max_len: int = 120) -> str:
    """A file-name-safe, single-component name for ``image_id``.

    Ids made only of ``[A-Za-z0-9._-]`` (and not starting with ``.``) are kept as they are; any other
    id has unsafe runs replaced by ``_`` and a 12-hex SHA-1 of the full id appended, so distinct ids
    stay distinct. The result never contains ``/`` or ``\\`` and never starts with ``.``.
    """
    cleaned = _UNSAFE.sub("_", image_id)[:max_len]
    if cleaned == image_id and cleaned and not cleaned.startswith("."):
        return cleaned
    digest = hashlib.sha1(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{cleaned.strip('._') or 'image'}-{digest}"


def join_under(prefix: str, name: str) -> str:
    """``prefix/name`` for a single safe component; raises ``ValueError`` if it could escape ``prefix``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"refusing output name {name!r}: not a single safe path component")
    return prefix.rstrip("/") + "/" + name


def _coco_image(i: int, row: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": i, "file_name": row["source_uri"], "width": row["width"], "height": row["height"],
            "reslabel_image_id": row["image_id"], "source_uri": row["source_uri"]}


def _coco_annotations(i: int, row: Dict[str, Any], first_id: int) -> List[Dict[str, Any]]:
    out = []
    for k, s in enumerate(row["segments"]):
        ann = {"id": first_id + k, "image_id": i, "category_id": s["category_id"] + 1,
               "segmentation": {"size": list(s["rle"]["size"]), "counts": s["rle"]["counts"]},
               "area": int(s["area"]), "bbox": [float(v) for v in s["bbox"]], "iscrowd": 0, "score": float(s["score"])}
        if s.get("instance_id") is not None:  # a run labelled with --instances: one annotation per instance
            ann["instance_id"] = int(s["instance_id"])
        out.append(ann)
    return out


def coco_chunks(run: Run, **filters: Any) -> Iterator[str]:
    """The COCO JSON document as text chunks, streamed in two passes over the run (images, annotations).

    ``filters`` are ``Run.rows`` filters (``status`` is always ``ok``); memory stays O(one batch).
    """
    filters["status"] = "ok"
    names = run.categories
    info = {"description": f"reslabel pseudo-labels from {run.uri}", "schema_version": SCHEMA_VERSION,
            "date_created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "run_metadata": run.manifest or {}}
    cats = [{"id": k + 1, "name": n, "supercategory": "", "reslabel_index": k} for k, n in enumerate(names)]
    yield '{"info": ' + json.dumps(info) + ', "licenses": [], "categories": ' + json.dumps(cats)
    yield ', "images": ['
    for i, row in enumerate(run.rows(**filters), start=1):
        yield ("" if i == 1 else ", ") + json.dumps(_coco_image(i, row))
    yield '], "annotations": ['
    ann_id, sep = 1, ""
    for i, row in enumerate(run.rows(**filters), start=1):
        for ann in _coco_annotations(i, row, ann_id):
            yield sep + json.dumps(ann)
            sep = ", "
        ann_id += len(row["segments"])
    yield "]}\n"


def write_coco(run: Run, out_uri: str, **filters: Any) -> str:
    """Write the COCO annotations JSON of ``run`` to ``out_uri`` (a file path or URI); returns it."""
    with uris.open_write(out_uri) as f:
        for chunk in coco_chunks(run, **filters):
            f.write(chunk.encode("utf-8"))
    return out_uri


def png_bytes(labels: np.ndarray, num_classes: int) -> bytes:
    """(H, W) class-index map (255 = unlabeled) → 8-bit palette PNG bytes (colours from ``palette``)."""
    if num_classes > UNLABELED:
        raise ValueError(f"{num_classes} classes do not fit an 8-bit PNG with {UNLABELED} reserved")
    a = np.ascontiguousarray(labels.astype(np.uint8))
    im = Image.frombytes("P", (a.shape[1], a.shape[0]), a.tobytes())
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:num_classes] = palette(num_classes)
    im.putpalette(pal.tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


NAME_BY = ("auto", "source_stem", "image_id")


def source_stem(source_uri: str) -> str:
    """The source's file name without extension (for a container member ``shard.tar#key.jpg``: ``key.jpg``)."""
    base = source_uri.rstrip("/").rsplit("/", 1)[-1]
    return base.split("#", 1)[1] if "#" in base else base.rsplit(".", 1)[0]


def png_name(row: Dict[str, Any], name_by: str = "source_stem") -> str:
    """PNG file name of a row: from its ``image_id`` or from the stem of its ``source_uri``."""
    if name_by == "image_id":
        key = row["image_id"]
    elif name_by == "source_stem":
        key = source_stem(row["source_uri"])
    else:
        raise ValueError(f"name_by={name_by!r}; valid: {', '.join(NAME_BY)}")
    return safe_name(key) + ".png"


def write_label_pngs(run: Run, out_prefix: str, name_by: str = "auto", fill: int = UNLABELED,
                     **filters: Any) -> Dict[str, str]:
    """Write one palette PNG per ``ok`` row under ``out_prefix`` plus ``label_maps.json``.

    ``fill`` is the value of pixels no segment covers: 255 (ignore), or e.g. ``run.background_fill()``
    to give them back the class the job left out of the segments (background). ``name_by``: ``"auto"``
    (default) names each file by its source's stem (``img_0001.jpg`` → ``img_0001.png``, so images and labels
    pair up by stem) where that stem is unique in the export, and ``<stem>-<image_id>.png`` for stems shared
    by several sources; ``"source_stem"`` (a shared stem is an error) or ``"image_id"``.
    ``label_maps.json`` lists the classes, the fill value, ``files`` (image id → file) and ``sources``
    (image id → source URI).

    Returns:
        image_id → written URI. Two rows mapping to one file name raise ``ValueError``.
    """
    if name_by not in NAME_BY:
        raise ValueError(f"name_by={name_by!r}; valid: {', '.join(NAME_BY)}")
    root = out_prefix.rstrip("/")
    names = run.categories
    files: Dict[str, str] = {}
    sources: Dict[str, str] = {}
    used: Dict[str, str] = {}
    filters["status"] = "ok"
    shared: set = set()
    if name_by == "auto":  # a first, light pass (two string columns): which stems occur more than once
        seen: set = set()
        for row in run.rows(columns=["source_uri"], **filters):
            stem = png_name(row, "source_stem")
            (shared if stem in seen else seen).add(stem)
    for row in run.rows(**filters):
        if name_by == "auto":
            name = png_name(row, "source_stem")
            if name in shared:
                name = safe_name(f"{source_stem(row['source_uri'])}-{row['image_id']}") + ".png"
        else:
            name = png_name(row, name_by)
        if name in used:
            raise ValueError(f"image ids {used[name]!r} and {row['image_id']!r} both map to {name}; "
                             "use name_by='auto' or 'image_id'")
        used[name] = row["image_id"]
        uris.write_bytes(join_under(root, name), png_bytes(label_map(row, fill), len(names)))
        files[row["image_id"]] = name
        sources[row["image_id"]] = row["source_uri"]
    index = {"classes": names, "ignore_index": UNLABELED, "unlabeled_value": fill,
             "value_meaning": f"class index 0..{len(names) - 1}; {fill} where no segment covers the pixel",
             "reduce_zero_label": False, "run": run.uri, "name_by": name_by, "files": files, "sources": sources}
    uris.write_bytes(join_under(root, PNG_INDEX), json.dumps(index, indent=1).encode())
    return {k: root + "/" + v for k, v in files.items()}


def read_label_png(uri: str) -> np.ndarray:
    """Read an exported label PNG back: (H, W) uint8 class indices (palette indices, not colours)."""
    with uris.open_read(uri) as f, Image.open(f) as im:
        return np.asarray(im)
