"""A ``torch`` Dataset pairing each labelled image of a run with its label map (for training on pseudo-labels).

    dset = LabeledImageDataset("out/runs/<run_id>", size=(256, 256))   # a path, URI or an opened Run
    image, labels = dset[0]       # (256, 256, 3) uint8 RGB tensor, (256, 256) int64 class indices, 255 = ignore
    loader = DataLoader(dset, batch_size=8, shuffle=True, num_workers=2)

Rows are not held in memory: the constructor scans the committed parts one row group at a time and keeps only
each kept row's position (part, row group, row: three small integer arrays); an item reads its row group
(a few cached per worker process) and decodes that one row. ``DataLoader(num_workers>0)`` and
``DistributedSampler`` work on it as on any map-style Dataset.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import pyarrow.parquet as pq
from torch.utils import data as torch_data

from pipeline.io import uri as uris
from pipeline.io.decode import decode_image
from pipeline.labels.reader import UNLABELED, Run, category_ids, keep_segment, label_map, open_run

ImageSource = Union[None, str, Callable[[Dict[str, Any]], np.ndarray]]


def load_rgb(uri: str) -> np.ndarray:
    """Read an image (local path or s3:// URI, taken literally) as (H, W, 3) uint8 RGB, decoded exactly as the
    labeling job decodes it (``pipeline.io.decode``: EXIF orientation applied). Raises ``ValueError`` if it fails."""
    decoded = decode_image(uris.read_bytes(uri), max_pixels=2**62)
    if decoded.status != "ok":
        raise ValueError(f"{uri}: cannot decode image ({decoded.status}: {decoded.error})")
    return decoded.image


def image_location(source_uri: str, images: Optional[str] = None) -> str:
    """Where a row's pixels are read from: ``source_uri`` itself, or ``<images>/<name>`` where name is the last
    path component of ``source_uri`` (for a container member ``shard.tar#key.jpg``: ``key.jpg``)."""
    if images is None:
        return source_uri
    return images.rstrip("/") + "/" + source_uri.rstrip("/").rsplit("/", 1)[-1].split("#")[-1]


def resize_pair(image: np.ndarray, labels: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image bilinearly and (H, W) labels by nearest neighbour (pixel centres, so no class is
    invented and 255 stays 255) to ``size`` = (h, w)."""
    import cv2

    h, w = labels.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    labels = labels[rows[:, None], cols[None, :]]
    if image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return image, labels


_INDEX_COLUMNS = ("image_id", "status")


class LabeledImageDataset(torch_data.Dataset):
    """``torch`` Dataset of ``(image, label_map)`` pairs for the ``ok`` rows of a run, streamed from its parts.

    Args:
        run: a run directory (local path or URI, as for ``open_run``) or an opened ``Run``.
        images: where the pixels come from: ``None`` reads each row's ``source_uri``; a directory
            (path or URI) reads ``image_location(source_uri, images)``; a callable gets the row.
        size: ``(H, W)`` pixels: images are resized bilinearly and label maps by nearest neighbour (255 stays
            255), so a default ``DataLoader`` can stack a batch. ``None`` keeps each image's own size.
        transform: optional ``f(image, label_map) -> anything`` applied per item to the (writable) numpy
            arrays, after ``size``.
        fill: label of pixels no segment covers (255; ``run.background_fill()`` restores a dropped background).
        allow_partial, storage_options: passed to ``open_run`` when ``run`` is a path/URI.
        cache_groups: decoded row groups kept per process (an item reads its row group once while cached).
        **filters: row filters as in ``Run.rows`` (``status`` is forced to ``"ok"``).
    Items: ``image`` (H, W, 3) uint8 RGB and ``label_map`` (H, W) int64 (255 = no segment or ignored), both
    writable ``torch.Tensor``s, unless ``transform`` returns something else. ``row(i)`` is item ``i``'s row
    (dict). An image whose size differs from the row's is an error. Reading in index order touches each row
    group once; a shuffled order reads a row group per item unless cached (small runs: raise
    ``cache_groups``).
    """

    def __init__(self, run: Union[str, Run], images: ImageSource = None, transform: Optional[Callable] = None,
                 fill: int = UNLABELED, size: Optional[Tuple[int, int]] = None, allow_partial: bool = False,
                 storage_options: Optional[Dict[str, Any]] = None, cache_groups: int = 4, **filters: Any):
        if not isinstance(run, Run):
            run = open_run(str(run), allow_partial=allow_partial, storage_options=storage_options)
        if size is not None and (len(size) != 2 or min(int(s) for s in size) <= 0):
            raise ValueError(f"size={size!r}: expected (height, width) in pixels, both > 0")
        unknown = set(filters) - {"status", "image_ids", "categories", "min_score"}
        if unknown:
            raise TypeError(f"LabeledImageDataset: unknown filter(s) {sorted(unknown)}")
        self.run, self.images, self.transform, self.fill = run, images, transform, fill
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.cache_groups = max(1, int(cache_groups))
        self._wanted = (category_ids(filters["categories"], run.categories)
                        if filters.get("categories") is not None else None)
        self._min_score = filters.get("min_score")
        ids = set(filters["image_ids"]) if filters.get("image_ids") is not None else None
        self._legacy = run.legacy
        parts, groups, offsets = [], [], []
        for p, path in enumerate(run.files):
            with run.fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                seg = self._segment_filter
                columns = list(_INDEX_COLUMNS) + (["segments"] if seg else [])
                for g in range(pf.num_row_groups):  # one row group in memory at a time
                    t = pf.read_row_group(g, columns=columns)
                    status = t.column("status").to_pylist()
                    image_id = t.column("image_id").to_pylist()
                    segs = t.column("segments").to_pylist() if seg else None
                    for r in range(t.num_rows):
                        if status[r] != "ok" or (ids is not None and image_id[r] not in ids):
                            continue
                        if segs is not None and not any(self.keep_segment(s) for s in segs[r]):
                            continue
                        parts.append(p)
                        groups.append(g)
                        offsets.append(r)
        self._index = (np.asarray(parts, np.int32), np.asarray(groups, np.int32), np.asarray(offsets, np.int64))
        self._cache: "collections.OrderedDict[Tuple[int, int], list]" = collections.OrderedDict()

    @property
    def _segment_filter(self) -> bool:
        return self._wanted is not None or self._min_score is not None

    def keep_segment(self, segment: Dict[str, Any]) -> bool:
        return keep_segment(segment, self._wanted, self._min_score)

    def __getstate__(self) -> Dict[str, Any]:  # DataLoader workers: no cached row groups travel
        state = dict(self.__dict__)
        state["_cache"] = collections.OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self._index[0])

    def row(self, i: int) -> Dict[str, Any]:
        """Item ``i``'s row (all columns, current schema names; segments filtered as the dataset's filters say)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} rows")
        i = i % len(self)
        key = (int(self._index[0][i]), int(self._index[1][i]))
        rows = self._cache.get(key)
        if rows is None:
            rows = self._read_group(*key)
            self._cache[key] = rows
            while len(self._cache) > self.cache_groups:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        row = dict(rows[int(self._index[2][i])])
        if self._segment_filter:
            row["segments"] = [s for s in row["segments"] if self.keep_segment(s)]
        return row

    def _read_group(self, part: int, group: int) -> list:
        with self.run.fs.open(self.run.files[part], "rb") as f:
            table = pq.ParquetFile(f).read_row_group(group)
        if self._legacy:  # schema 1.x: config_hash is job_hash; no segmenter_hash
            table = table.rename_columns(["job_hash" if n == "config_hash" else n for n in table.column_names])
        return table.to_pylist()

    def __getitem__(self, i: int):
        import torch

        row = self.row(i)
        image = self._load(row)
        if image.shape[:2] != (row["height"], row["width"]):
            raise ValueError(f"{row['image_id']}: image is {image.shape[1]}x{image.shape[0]} but the labels "
                             f"are {row['width']}x{row['height']} (wrong image source?)")
        labels = label_map(row, self.fill).astype(np.int64)
        if self.size is not None:
            image, labels = resize_pair(image, labels, self.size)
        image, labels = np.array(image, dtype=np.uint8), np.ascontiguousarray(labels)  # writable copies
        if self.transform:
            return self.transform(image, labels)
        return torch.from_numpy(image), torch.from_numpy(labels)

    def _load(self, row: Dict[str, Any]) -> np.ndarray:
        if callable(self.images):
            return self.images(row)
        return load_rgb(image_location(row["source_uri"], self.images))
