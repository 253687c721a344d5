"""The label row: one per input image, whatever happened to it.

A row is ``ok`` with zero or more segments, or carries a failure ``status`` with an ``error`` message
and no segments. The pyarrow schema below is the single source of truth; ``make_row`` builds a row as
a plain dict and checks it against the schema so that nothing malformed reaches a Parquet writer.
"""
from __future__ import annotations

import enum
from typing import Any, Mapping, Sequence

import pyarrow as pa

SCHEMA_VERSION = "2.2"  # 2.0: config_hash became job_hash, segmenter_hash added; 2.1: instance_id, ignore;
# 2.2: confidence (additive: older parts read it as null)
# columns of schema 1.x runs under their current names (the reader renames them; see ``LEGACY_SCHEMA``)
LEGACY_COLUMNS = {"config_hash": "job_hash"}


class Status(str, enum.Enum):
    """Outcome of one input image. Values are stored as strings in the ``status`` column."""

    OK = "ok"
    DECODE_ERROR = "decode_error"  # bytes are not a decodable image (truncated, corrupt, not an image)
    UNSUPPORTED = "unsupported"  # decodable container but a format/mode we refuse (e.g. video)
    TOO_LARGE = "too_large"  # declared pixel count above the max-pixels guard (decompression bomb)
    TOO_SMALL = "too_small"  # a side is smaller than one ViT patch after resizing
    EMPTY = "empty"  # zero bytes
    READ_ERROR = "read_error"  # the object could not be read (missing, permission, retries exhausted)
    INFERENCE_ERROR = "inference_error"  # the model failed on this image (e.g. out of memory)


RLE_TYPE = pa.struct(
    [
        pa.field("size", pa.list_(pa.int32()), nullable=False),  # [height, width] in pixels
        pa.field("counts", pa.string(), nullable=False),  # COCO compressed RLE, utf-8
    ]
)

SEGMENT_TYPE = pa.struct(
    [
        pa.field("category_id", pa.int32(), nullable=False),  # index into the vocabulary's classes
        pa.field("category_name", pa.string(), nullable=False),
        pa.field("rle", RLE_TYPE, nullable=False),
        pa.field("area", pa.int64(), nullable=False),  # pixels
        pa.field("bbox", pa.list_(pa.float64()), nullable=False),  # [x, y, w, h] in pixels (COCO XYWH)
        pa.field("score", pa.float32(), nullable=False),  # mean class probability inside the mask
        pa.field("pixel_fraction", pa.float32(), nullable=False),  # area / (height * width)
        # 2.1: 1..K within the image when the job ran with --instances (one segment per connected component),
        # null for semantic segments (one per class)
        pa.field("instance_id", pa.int32()),
    ]
)

LABEL_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("width", pa.int32()),  # original width in pixels (null when not decoded)
        pa.field("height", pa.int32()),  # original height in pixels
        pa.field("status", pa.string(), nullable=False),  # a Status value
        pa.field("error", pa.string()),  # null when ok
        pa.field("segments", pa.list_(SEGMENT_TYPE), nullable=False),  # empty unless ok
        # 2.1: pixels whose winning class probability is below --ignore-below, in no segment; null without it
        pa.field("ignore", RLE_TYPE),
        # 2.2: the image's confidence in [0, 1]: the mean over ALL its pixels of the probability of the class each
        # pixel got (background, excluded classes and pixels below prob_thd included, so an all-background image
        # has one too); null when not ok and in runs written before 2.2
        pa.field("confidence", pa.float32()),
        # provenance
        pa.field("method", pa.string(), nullable=False),
        pa.field("base", pa.string(), nullable=False),
        pa.field("preset", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("weights_digest", pa.string(), nullable=False),
        pa.field("vocabulary_hash", pa.string(), nullable=False),
        # segmenter config + model + weights + dtype + vocabulary
        pa.field("segmenter_hash", pa.string(), nullable=False),
        # segmenter_hash + the job's row options: the incremental key
        pa.field("job_hash", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("labeled_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"reslabel.schema_version": SCHEMA_VERSION},
)

# schema 1.x (before segmenter_hash/job_hash): read by ``pipeline.labels.reader`` for runs written then
LEGACY_SCHEMA = pa.schema([pa.field("config_hash", pa.string(), nullable=False) if f.name == "job_hash" else f
                           for f in LABEL_SCHEMA if f.name != "segmenter_hash"],
                          metadata={"reslabel.schema_version": "1.0"})

_STATUSES = {s.value for s in Status}


def validate_row(row: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the field if ``row`` breaks the schema's invariants."""
    missing = [f.name for f in LABEL_SCHEMA if f.name not in row]
    if missing:
        raise ValueError(f"label row for {row.get('source_uri')!r} lacks fields {missing}")
    extra = sorted(set(row) - set(LABEL_SCHEMA.names))
    if extra:
        raise ValueError(f"label row for {row.get('source_uri')!r} has unknown fields {extra}")
    for f in LABEL_SCHEMA:
        if not f.nullable and row[f.name] is None:
            raise ValueError(f"label row for {row.get('source_uri')!r}: {f.name} must not be null")
    status = row["status"]
    if status not in _STATUSES:
        raise ValueError(f"label row for {row['source_uri']!r}: unknown status {status!r}")
    if status != Status.OK.value:
        if row["confidence"] is not None:
            raise ValueError(f"label row for {row['source_uri']!r}: status {status} but has a confidence")
        if row["ignore"] is not None:
            raise ValueError(f"label row for {row['source_uri']!r}: status {status} but has an ignore region")
        if row["segments"]:
            raise ValueError(f"label row for {row['source_uri']!r}: status {status} but has segments")
        if not row["error"]:
            raise ValueError(f"label row for {row['source_uri']!r}: status {status} needs an error message")
    for seg in row["segments"]:
        h, w = seg["rle"]["size"]
        if not (0 <= seg["area"] <= h * w):
            raise ValueError(f"label row for {row['source_uri']!r}: segment area out of range")
        if len(seg["bbox"]) != 4:
            raise ValueError(f"label row for {row['source_uri']!r}: bbox must be [x, y, w, h]")


def make_row(**fields: Any) -> dict:
    """Build one label row (a dict in ``LABEL_SCHEMA`` order) and validate it.

    ``status`` may be a ``Status`` or its string value; ``segments`` defaults to ``[]``.
    """
    fields.setdefault("segments", [])
    fields.setdefault("error", None)
    fields.setdefault("ignore", None)
    fields.setdefault("confidence", None)
    fields["segments"] = [s if "instance_id" in s else {**s, "instance_id": None} for s in fields["segments"]]
    if isinstance(fields.get("status"), Status):
        fields["status"] = fields["status"].value
    row = {name: fields.get(name) for name in LABEL_SCHEMA.names}
    extra = sorted(set(fields) - set(LABEL_SCHEMA.names))
    if extra:
        raise ValueError(f"unknown label-row fields {extra}")
    validate_row(row)
    return row


def rows_to_table(rows: Sequence[Mapping[str, Any]], metadata: Mapping[str, str] | None = None) -> pa.Table:
    """Rows → a pyarrow Table with exactly ``LABEL_SCHEMA`` (plus extra key-value metadata)."""
    schema = LABEL_SCHEMA
    if metadata:
        schema = schema.with_metadata({**(schema.metadata or {}),
                                       **{k.encode(): v.encode() for k, v in metadata.items()}})
    return pa.Table.from_pylist(list(rows), schema=schema)
