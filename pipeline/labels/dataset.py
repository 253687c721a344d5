"""A ``torch`` Dataset pairing each labelled image of a run with its label map (for training on pseudo-labels).

    dset = LabeledImageDataset(open_run("out/runs/<run_id>"), images=None)   # pixels from source_uri
    image, labels = dset[0]       # (H, W, 3) uint8 RGB, (H, W) int64 class indices, 255 = no segment
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import numpy as np
from torch.utils import data as torch_data

from pipeline.io import uri as uris
from pipeline.io.decode import decode_image
from pipeline.labels.reader import UNLABELED, Run, label_map

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


class LabeledImageDataset(torch_data.Dataset):
    """``torch`` Dataset of ``(image, label_map)`` pairs for the ``ok`` rows of a run.

    Args:
        run: an opened ``Run``.
        images: where the pixels come from: ``None`` reads each row's ``source_uri``; a directory
            (path or URI) reads ``image_location(source_uri, images)``; a callable gets the row.
        transform: optional ``f(image, label_map) -> anything`` applied per item.
        fill: label of pixels no segment covers (255; ``run.background_fill()`` restores a dropped background).
        **filters: row filters as in ``Run.rows`` (``status`` is forced to ``"ok"``).
    Items: ``image`` (H, W, 3) uint8 RGB and ``label_map`` (H, W) int64 (255 = no segment), unless
    ``transform`` returns something else. An image whose size differs from the row's is an error.
    """

    def __init__(self, run: Run, images: ImageSource = None, transform: Optional[Callable] = None,
                 fill: int = UNLABELED, **filters: Any):
        filters["status"] = "ok"
        self.fill = fill
        self.rows = list(run.rows(**filters))
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        image = self._load(row)
        if image.shape[:2] != (row["height"], row["width"]):
            raise ValueError(f"{row['image_id']}: image is {image.shape[1]}x{image.shape[0]} but the labels "
                             f"are {row['width']}x{row['height']} (wrong image source?)")
        labels = label_map(row, self.fill).astype(np.int64)
        return self.transform(image, labels) if self.transform else (image, labels)

    def _load(self, row: Dict[str, Any]) -> np.ndarray:
        if callable(self.images):
            return self.images(row)
        return load_rgb(image_location(row["source_uri"], self.images))
