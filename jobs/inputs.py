"""Input discovery: a URI → the *index*, one row per input image, before any bytes are read.

Kinds: ``images`` (a prefix/directory or a glob of image files), ``parquet`` (files with an image-bytes
column; img2dataset's ``jpg`` + ``key`` by default), ``webdataset`` (.tar shards; tar headers only are
read, member data is fetched later by byte range), ``manifest`` (Parquet/CSV/JSONL listing URIs with
optional ids). ``auto`` picks one from the URI. Every row says how to fetch its bytes later:
``path`` + ``offset``/``length`` (-1 = whole object) or ``row_group``/``row`` inside a Parquet file;
``pre_status``/``pre_error`` mark inputs already known to be bad (e.g. a tar sample without an image).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Dict, List, Optional, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from jobs import storage
from pipeline import uri as uris
from schemas import Status

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST_EXTS = (".csv", ".jsonl", ".json", ".ndjson")
INPUT_FORMATS = ("auto", "images", "parquet", "webdataset", "manifest")

INDEX_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),  # URI of the object holding the bytes
    pa.field("offset", pa.int64(), nullable=False),  # byte offset, -1 = whole object
    pa.field("length", pa.int64(), nullable=False),  # bytes, -1 = whole object
    pa.field("row_group", pa.int32(), nullable=False),  # Parquet inputs only, else -1
    pa.field("row", pa.int32(), nullable=False),  # row inside the row group, else -1
    pa.field("pre_status", pa.string()),  # a Status value when the input is known bad before reading
    pa.field("pre_error", pa.string()),
])


class InputError(ValueError):
    """The input URI is missing, empty or malformed; raised before any work starts."""


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How to read containers: column names for Parquet/manifest inputs."""

    bytes_column: str = "jpg"
    id_column: str = "key"
    uri_column: Optional[str] = None  # manifest: None → first of uri, url, path, image_uri


def stable_id(uri: str) -> str:
    """Stable image id from a URI: first 24 hex digits of its sha256."""
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:24]


def entry(image_id: str, source_uri: str, path: str, offset: int = -1, length: int = -1, row_group: int = -1,
          row: int = -1, pre_status: Optional[str] = None, pre_error: Optional[str] = None) -> Dict:
    return dict(image_id=image_id, source_uri=source_uri, path=path, offset=offset, length=length,
                row_group=row_group, row=row, pre_status=pre_status, pre_error=pre_error)


def _image_entry(u: str, not_regular: Optional[str] = None) -> Dict:
    """An image file's entry. A name that is not valid UTF-8 (local files only), or a local entry that is
    not a regular file (``not_regular``: "FIFO", "socket", ...), becomes an ``unsupported`` row, never read."""
    try:
        u.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode kept the raw bytes as surrogates; Parquet strings cannot hold them
        shown = u.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return entry(stable_id(shown), shown, shown, pre_status=Status.UNSUPPORTED.value,
                     pre_error="file name is not valid UTF-8; rename the file to label it")
    if not_regular is not None:
        return entry(stable_id(u), u, u, pre_status=Status.UNSUPPORTED.value,
                     pre_error=f"not a regular file: {not_regular}")
    return entry(stable_id(u), u, u)


def list_entries(uri: str, exts: tuple) -> List[Tuple[str, Optional[str]]]:
    """Files under a prefix/directory (recursive) or matching a glob, filtered by extension, by URI:
    ``(uri, None)`` for a regular file, ``(uri, what)`` for a local entry that is not one ("FIFO", ...).

    A URI that exists is taken literally; only one that does not and holds ``*?[`` is a glob.
    """
    fs, path = storage.fs_for(uri)
    fs.invalidate_cache()
    k = storage.kind(uri)
    if k is None and any(ch in path for ch in "*?["):
        found = storage.retrying(lambda: fs.glob(path), f"list {uri}")
    elif k is None:
        raise InputError(f"input {uri}: no such file, directory or prefix")
    elif k == "other":
        raise InputError(f"input {uri}: not a regular file: {uris.non_regular_kind(path)}")
    else:
        found = [path] if k == "file" else storage.retrying(lambda: fs.find(path), f"list {uri}")
    keep = [p for p in found if p.lower().endswith(exts) and not os.path.basename(p).startswith((".", "_"))]
    found_uris = sorted(storage.to_uri(fs, p) for p in keep)
    return [(u, None if storage.is_remote(u) else uris.non_regular_kind(u)) for u in found_uris]


def list_files(uri: str, exts: tuple) -> List[str]:
    """URIs of the regular files ``list_entries`` finds (a FIFO, socket or device is never read)."""
    return [u for u, not_regular in list_entries(uri, exts) if not_regular is None]


def detect_format(uri: str) -> str:
    """``auto`` → a concrete kind, by extension of the URI or of the files under it."""
    low = storage.normalize(uri).lower()
    if low.endswith(MANIFEST_EXTS):
        return "manifest"
    if low.endswith(".tar") or low.endswith(".tar*") or low.endswith("*.tar"):
        return "webdataset"
    if low.endswith(".parquet") or low.endswith("*.parquet"):
        return _parquet_kind(list_files(uri, (".parquet",)))
    if low.endswith(IMAGE_EXTS):
        return "images"
    if list_files(uri, (".tar",)):
        return "webdataset"
    parquets = list_files(uri, (".parquet",))
    if parquets:
        return _parquet_kind(parquets)
    return "images"


def _parquet_kind(files: List[str]) -> str:
    import pyarrow.parquet as pq

    if not files:
        return "parquet"
    with storage.open_read(files[0]) as f:
        schema = pq.read_schema(f)
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    return "parquet" if binary else "manifest"


def build_index(uri: str, fmt: str, options: InputOptions = InputOptions()) -> pa.Table:
    """The index (``INDEX_SCHEMA``) of all inputs under ``uri``, sorted by ``image_id``.

    Raises ``InputError`` if the input does not exist, holds no inputs, or repeats an image id.
    """
    from jobs import containers

    fmt = detect_format(uri) if fmt == "auto" else fmt
    if fmt == "images":
        rows = [_image_entry(u, not_regular) for u, not_regular in list_entries(uri, IMAGE_EXTS)]
    elif fmt == "parquet":
        rows = containers.index_parquet(list_files(uri, (".parquet",)), options)
    elif fmt == "webdataset":
        rows = containers.index_webdataset(list_files(uri, (".tar",)))
    elif fmt == "manifest":
        rows = containers.index_manifest(list_files(uri, (".parquet",) + MANIFEST_EXTS), options)
    else:
        raise InputError(f"--input-format {fmt!r}; valid: {', '.join(INPUT_FORMATS)}")
    if not rows:
        raise InputError(f"input {uri} ({fmt}): no inputs found")
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA).sort_by("image_id")
    ids = table.column("image_id")
    if len(pc.unique(ids)) != len(ids):
        vc = pc.value_counts(ids).to_pylist()
        dup = [v["values"] for v in vc if v["counts"] > 1][:5]
        raise InputError(f"input {uri}: duplicate image ids {dup} (ids must be unique per input)")
    return table
