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
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from jobs import storage
from pipeline.io import uri as uris
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


def _listing(uri: str) -> Iterator[Tuple[str, Optional[str]]]:
    """``(uri, not_regular)`` for every file under a prefix/directory (streamed), a single file, or the files
    matching a glob. A URI that exists is taken literally; only one that does not and holds ``*?[`` is a glob."""
    fs, path = storage.fs_for(uri)
    k = storage.kind(uri)
    if k is None and any(ch in path for ch in "*?["):
        found = storage.retrying(lambda: fs.glob(path), f"list {uri}")
        for u in sorted(storage.to_uri(fs, p) for p in found):
            yield u, None if storage.is_remote(u) else uris.non_regular_kind(u)
    elif k is None:
        raise InputError(f"input {uri}: no such file, directory or prefix")
    elif k == "other":
        raise InputError(f"input {uri}: not a regular file: {uris.non_regular_kind(path)}")
    elif k == "file":
        yield uri, None
    else:
        yield from uris.iter_files(uri)


def _visible(u: str, exts: tuple) -> bool:
    base = u.rstrip("/").rsplit("/", 1)[-1]
    return base.lower().endswith(exts) and not base.startswith((".", "_"))


def list_entries(uri: str, exts: tuple) -> List[Tuple[str, Optional[str]]]:
    """Files under a prefix/directory (recursive) or matching a glob, filtered by extension, sorted by URI:
    ``(uri, None)`` for a regular file, ``(uri, what)`` for a local entry that is not one ("FIFO", ...)."""
    return sorted(e for e in _listing(uri) if _visible(e[0], exts))


def list_files(uri: str, exts: tuple) -> List[str]:
    """URIs of the regular files ``list_entries`` finds (a FIFO, socket or device is never read)."""
    return [u for u, not_regular in list_entries(uri, exts) if not_regular is None]


def scan_input(uri: str, fmt: str, on_images: Callable[[List[Tuple[str, Optional[str]]]], None],
               chunk_rows: int = 100_000) -> Tuple[str, List[str]]:
    """List ``uri`` once. Image files go to ``on_images`` in chunks of at most ``chunk_rows`` while the listing
    runs (memory stays flat); container files are collected. Returns ``(kind, container files)``.

    ``fmt="auto"`` decides by the URI's extension, else by what the one listing found: WebDataset shards, else
    Parquet (image bytes → ``parquet``, else ``manifest``), else images. When it is not images, the image
    chunks already handed out are to be dropped by the caller (a prefix mixing both kinds is rare).
    """
    low = storage.normalize(uri).lower()
    if fmt == "auto" and low.endswith(MANIFEST_EXTS):
        fmt = "manifest"
    elif fmt == "auto" and (low.endswith(".tar") or low.endswith("*.tar")):
        fmt = "webdataset"
    containers: Dict[str, List[str]] = {".tar": [], ".parquet": [], "manifest": []}
    chunk: List[Tuple[str, Optional[str]]] = []
    want_images = fmt in ("auto", "images")
    for u, not_regular in _listing(uri):
        if want_images and _visible(u, IMAGE_EXTS):
            chunk.append((u, not_regular))
            if len(chunk) >= chunk_rows:
                on_images(chunk)
                chunk = []
        elif not_regular is None and _visible(u, (".tar",)):
            containers[".tar"].append(u)
        elif not_regular is None and _visible(u, (".parquet",)):
            containers[".parquet"].append(u)
        elif not_regular is None and _visible(u, MANIFEST_EXTS):
            containers["manifest"].append(u)
    if chunk:
        on_images(chunk)
    files = {k: sorted(v) for k, v in containers.items()}
    if fmt == "auto":
        fmt = ("webdataset" if files[".tar"] else _parquet_kind(files[".parquet"]) if files[".parquet"] else "images")
    return fmt, {"images": [], "webdataset": files[".tar"], "parquet": files[".parquet"],
                 "manifest": files[".parquet"] + files["manifest"]}[fmt]


def detect_format(uri: str) -> str:
    """``auto`` → a concrete kind, by extension of the URI or of the files under it (one listing)."""
    return scan_input(uri, "auto", lambda chunk: None)[0]


def _parquet_kind(files: List[str]) -> str:
    import pyarrow.parquet as pq

    if not files:
        return "parquet"
    with storage.open_read(files[0]) as f:
        schema = pq.read_schema(f)
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    return "parquet" if binary else "manifest"


def image_rows(chunk: List[Tuple[str, Optional[str]]]) -> List[Dict]:
    """Index entries of listed image files (``scan_input``'s chunks)."""
    return [_image_entry(u, not_regular) for u, not_regular in chunk]


def distinct_inputs(table: pa.Table, what: str) -> pa.Table:
    """``table`` sorted by (image_id, source_uri) with repeated (image_id, source_uri) pairs kept once (the same
    URI listed twice is one input). Raises ``InputError`` naming up to 5 ids that still repeat (two different
    inputs under one id)."""
    table = table.sort_by([("image_id", "ascending"), ("source_uri", "ascending")])
    if table.num_rows < 2:
        return table
    ids, srcs = table.column("image_id"), table.column("source_uri")
    same_id = pc.equal(ids.slice(1), ids.slice(0, table.num_rows - 1))
    same_src = pc.equal(srcs.slice(1), srcs.slice(0, table.num_rows - 1))
    repeat = pc.and_(same_id, same_src)
    keep = pa.concat_arrays([pa.array([True]), pc.invert(repeat).combine_chunks()])
    table = table.filter(keep)
    ids = table.column("image_id")
    if table.num_rows > 1:
        dup = pc.equal(ids.slice(1), ids.slice(0, table.num_rows - 1)).combine_chunks()
        if pc.any(dup).as_py():
            examples = pc.unique(ids.slice(1).filter(dup)).to_pylist()[:5]
            raise InputError(f"input {what}: duplicate image ids {examples} (ids must be unique per input)")
    return table
