"""A review queue: the least confident images of a run as Label Studio tasks with the labels attached as
predictions (pre-annotations), and the corrected masks read back.

Why Label Studio: its JSON task import takes, per image, ``predictions`` whose results are brush masks of a
``BrushLabels`` tag, one per class (or instance), each with a score; a reviewer opens the task with the masks
drawn, fixes them and submits. CVAT's COCO import brings annotations without a model's score or version
attached and needs the images uploaded into the task, while Label Studio reads ``s3://`` and local images in
place (a cloud or local storage connection). The brush masks use Label Studio's RLE: a bit stream of
32-bit value count, 5-bit word size - 1, four 4-bit run-length field sizes - 1, then chunks (here only
"repeat" chunks: flag 1, 2-bit field-size index, run length - 1, value), over the image's RGBA bytes
row-major; the mask is its alpha channel (255 inside). ``decode_brush_rle`` reads it back.

    tasks = review_tasks(run, n=50)                        # the 50 least confident images
    write_review(run, "review/tasks.json", n=50, per_class=5)  # + label_config.xml beside it
    for image_id, labels in corrected_label_maps("export.json", run.categories): ...   # after review
"""
from __future__ import annotations

import heapq
import json
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from xml.sax.saxutils import quoteattr

import numpy as np

from pipeline.io import uri as uris
from pipeline.labels.overlay import palette
from pipeline.labels.reader import UNLABELED, Run, decode_segment, ignore_mask

FROM_NAME, TO_NAME = "label", "image"  # the BrushLabels and Image tags of the labeling config
IGNORED_LABEL = "ignored"  # the brush label of a row's ignore region (--ignore-below); read back as 255
RLE_SIZES = (3, 4, 8, 16)  # run-length field sizes (bits) a chunk may use
WORD_SIZE = 8


def row_confidence(row: Dict[str, Any]) -> Optional[float]:
    """The image's confidence: the row's ``confidence`` (schema 2.2: the mean probability of the class each pixel
    got, over all pixels, so all-background images have one); for older rows the area-weighted mean score of
    its segments, and None when it has none (such rows are not ranked)."""
    if row.get("confidence") is not None:
        return float(row["confidence"])
    area = sum(s["area"] for s in row["segments"])
    return sum(s["score"] * s["area"] for s in row["segments"]) / area if area else None


# ---- Label Studio brush RLE ---------------------------------------------------------------------------------
def encode_brush_rle(mask: np.ndarray) -> List[int]:
    """(H, W) bool mask → Label Studio brush RLE (list of byte values) of the RGBA image whose every channel is
    255 inside the mask and 0 outside."""
    flat = np.asarray(mask, dtype=bool).ravel()
    n = flat.size * 4
    bits: List[str] = [format(n, "032b"), format(WORD_SIZE - 1, "05b")] + [format(s - 1, "04b") for s in RLE_SIZES]
    if flat.size:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [flat.size]])
        longest = 1 << RLE_SIZES[-1]
        for start, end in zip(starts.tolist(), ends.tolist()):
            value = format(255 if flat[start] else 0, "08b")
            left = (end - start) * 4  # RGBA bytes of the run
            while left:
                run = min(left, longest)
                k = next(i for i, s in enumerate(RLE_SIZES) if run - 1 < (1 << s))
                bits.append("1" + format(k, "02b") + format(run - 1, f"0{RLE_SIZES[k]}b") + value)
                left -= run
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big"))


def decode_brush_rle(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE (byte values) → (H, W) bool: the alpha channel of the decoded RGBA image > 0.
    Reads both chunk kinds (repeat and literal), so masks drawn in Label Studio read back too."""
    bits = "".join(format(b, "08b") for b in rle)
    pos = 0

    def read(k: int) -> int:
        nonlocal pos
        value = int(bits[pos:pos + k], 2) if k else 0
        pos += k
        return value

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        repeat = read(1)
        j = min(i + 1 + read(sizes[read(2)]), num)
        if repeat:
            out[i:j] = read(word)
        else:
            for t in range(i, j):
                out[t] = read(word)
        i = j
    if num != height * width * 4:
        raise ValueError(f"brush RLE holds {num} values, not {height}x{width}x4")
    return out.reshape(height, width, 4)[:, :, 3] > 0


# ---- tasks --------------------------------------------------------------------------------------------------
def select_rows(run: Run, n: int = 50, per_class: int = 0) -> List[Tuple[float, Dict[str, Any]]]:
    """The ``n`` least confident ``ok`` rows, plus the ``per_class`` least confident rows containing each class,
    least confident first, each once: ``(confidence, row)``. One streaming pass; rows without a confidence (older
    runs, no segment) are not selected."""
    overall: List[Tuple[float, int, Dict]] = []
    by_class: Dict[int, List[Tuple[float, int, Dict]]] = {}
    for k, row in enumerate(run.rows(status="ok")):
        conf = row_confidence(row)
        if conf is None:
            continue
        item = (-conf, -k, row)
        for heap, size in [(overall, n)] + [(by_class.setdefault(c, []), per_class)
                                            for c in {s["category_id"] for s in row["segments"]}]:
            if len(heap) < size:
                heapq.heappush(heap, item)
            elif size and item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
    chosen: Dict[str, Tuple[float, int, Dict]] = {}
    for heap in [overall, *by_class.values()]:
        for neg, negk, row in heap:
            chosen[row["image_id"]] = (-neg, -negk, row)
    return [(c, row) for c, _, row in sorted(chosen.values(), key=lambda t: (t[0], t[1]))]


def label_config(class_names: Sequence[str], ignored: bool = False) -> str:
    """The Label Studio labeling config (XML) the tasks are made for: an ``Image`` and a ``BrushLabels`` with one
    ``Label`` per class (the PNG export's colours), plus ``ignored`` for runs with ignore regions."""
    colors = palette(len(class_names))
    labels = [f"    <Label value={quoteattr(name)} background=\"#{int(c[0]):02x}{int(c[1]):02x}{int(c[2]):02x}\"/>"
              for name, c in zip(class_names, colors)]
    if ignored:
        labels.append(f'    <Label value="{IGNORED_LABEL}" background="#808080"/>')
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n' + "\n".join(labels)
            + "\n  </BrushLabels>\n</View>\n")


def task(row: Dict[str, Any], confidence: float, image_url: str, model_version: str) -> Dict[str, Any]:
    """One Label Studio task: ``data`` (image URL, ids) and one prediction holding a brush result per segment
    (and one for the ignore region)."""
    h, w = int(row["height"]), int(row["width"])
    results = []
    for k, seg in enumerate(row["segments"]):
        results.append(_brush(f"{row['image_id'][:10]}-{k}", decode_segment(seg), seg["category_name"], h, w,
                              float(seg["score"])))
    if row.get("ignore"):
        results.append(_brush(f"{row['image_id'][:10]}-ign", ignore_mask(row), IGNORED_LABEL, h, w, None))
    return {"data": {"image": image_url, "reslabel_image_id": row["image_id"], "source_uri": row["source_uri"],
                     "confidence": confidence},
            "predictions": [{"model_version": model_version, "score": confidence, "result": results}]}


def _brush(rid: str, mask: np.ndarray, label: str, h: int, w: int, score: Optional[float]) -> Dict[str, Any]:
    out = {"id": rid, "type": "brushlabels", "from_name": FROM_NAME, "to_name": TO_NAME, "original_width": w,
           "original_height": h, "image_rotation": 0,
           "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [label]}}
    if score is not None:
        out["score"] = score
    return out


def review_tasks(run: Run, n: int = 50, per_class: int = 0,
                 image_url: Optional[Callable[[Dict[str, Any]], str]] = None) -> List[Dict[str, Any]]:
    """Label Studio tasks for ``select_rows(run, n, per_class)``, least confident first. ``image_url(row)`` gives
    the URL Label Studio loads (default: ``source_uri``: ``s3://`` with a cloud storage connection; a local path
    needs e.g. ``lambda r: "/data/local-files/?d=" + relative_path``)."""
    version = "reslabel " + ((run.manifest or {}).get("segmenter_hash") or "")
    url = image_url or (lambda row: row["source_uri"])
    return [task(row, conf, url(row), version.strip()) for conf, row in select_rows(run, n, per_class)]


def write_review(run: Run, out_uri: str, n: int = 50, per_class: int = 0,
                 image_url: Optional[Callable[[Dict[str, Any]], str]] = None) -> Dict[str, Any]:
    """Write the tasks JSON to ``out_uri`` and the labeling config beside it (``label_config.xml``); returns
    ``{"tasks": count, "tasks_uri": ..., "config_uri": ...}``."""
    tasks = review_tasks(run, n, per_class, image_url)
    ignored = any(r["value"]["brushlabels"] == [IGNORED_LABEL] for t in tasks for r in t["predictions"][0]["result"])
    uris.write_bytes(out_uri, json.dumps(tasks).encode("utf-8"))
    config_uri = out_uri.rsplit("/", 1)[0] + "/label_config.xml" if "/" in out_uri else "label_config.xml"
    uris.write_bytes(config_uri, label_config(run.categories, ignored=ignored).encode("utf-8"))
    return {"tasks": len(tasks), "tasks_uri": out_uri, "config_uri": config_uri}


def corrected_label_maps(export_uri: str, class_names: Sequence[str],
                         fill: int = UNLABELED) -> Iterator[Tuple[str, np.ndarray]]:
    """Read a Label Studio JSON export of reviewed tasks back: ``(reslabel image id, (H, W) int32 label map)`` per
    task with a submitted annotation (the latest one not cancelled). Brushes of a class give its index, the
    ``ignored`` brush 255, unpainted pixels ``fill``; later brushes paint over earlier ones."""
    with uris.open_read(export_uri) as f:
        tasks = json.loads(f.read().decode("utf-8"))
    index = {name: i for i, name in enumerate(class_names)}
    for t in tasks:
        done = [a for a in t.get("annotations", []) if not (a.get("was_cancelled") or a.get("skipped"))]
        if not done:
            continue
        annotation = max(done, key=lambda a: (str(a.get("created_at", "")), a.get("id", 0)))
        out: Optional[np.ndarray] = None
        for r in annotation.get("result", []):
            value = r.get("value", {})
            if r.get("type", "").lower() != "brushlabels" or value.get("format") != "rle":
                continue
            h, w = int(r["original_height"]), int(r["original_width"])
            if out is None:
                out = np.full((h, w), fill, dtype=np.int32)
            label = (value.get("brushlabels") or [IGNORED_LABEL])[0]
            if label != IGNORED_LABEL and label not in index:
                raise ValueError(f"task {t.get('id')}: brush label {label!r} is not a class of the run")
            out[decode_brush_rle(value["rle"], h, w)] = UNLABELED if label == IGNORED_LABEL else index[label]
        if out is not None:
            yield t["data"]["reslabel_image_id"], out
