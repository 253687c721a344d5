"""Indexing and byte fetching for every input kind: image files (listed by ``jobs.inputs``) and containers
(Parquet with image bytes, WebDataset tars, manifests).

``index_unit`` turns one unit of work (a chunk of listed images, or container files) into index rows; it runs
in the planner's index tasks (``index_*`` return ``jobs.inputs.entry`` dicts). ``fetch_bytes`` runs in read
tasks and returns each row's encoded image bytes (or a status and error) using the locator in the index.
``build_index`` indexes a whole (small) input in this process.
"""
from __future__ import annotations

import concurrent.futures
import os
import posixpath
import tarfile
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import storage
from jobs.inputs import (
    IMAGE_EXTS,
    INDEX_SCHEMA,
    INPUT_FORMATS,
    InputError,
    InputOptions,
    distinct_inputs,
    entry,
    image_rows,
    scan_input,
    stable_id,
)
from pipeline.io.uri import NotRegularFile
from schemas import Status


def index_parquet(files: Sequence[str], options: InputOptions) -> List[Dict]:
    """One entry per row of each file; id from ``options.id_column`` (else a hash of file#row)."""
    out = []
    for uri in files:
        with storage.open_read(uri) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if options.bytes_column not in names:
                raise InputError(f"{uri}: no image-bytes column {options.bytes_column!r} (columns: {names}); "
                                 "set --bytes-column")
            has_id = options.id_column in names
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                ids = pf.read_row_group(rg, columns=[options.id_column]).column(0).to_pylist() if has_id else [None] * n
                for i, key in enumerate(ids):
                    loc = f"{uri}#rg{rg}.{i}"
                    image_id = str(key) if key is not None else stable_id(loc)
                    out.append(entry(image_id, f"{uri}#{key}" if key is not None else loc, uri, row_group=rg, row=i))
    return out


def _wds_key(name: str) -> Tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename; the rest is the extension."""
    d, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(d, stem), ext.lower()


def index_webdataset(files: Sequence[str]) -> List[Dict]:
    """One entry per sample (members sharing a key); the image member is located by byte range."""
    out = []
    for uri in files:
        samples: Dict[str, List[tarfile.TarInfo]] = {}
        try:
            with storage.open_read(uri) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for m in tar:
                    if m.isfile():
                        samples.setdefault(_wds_key(m.name)[0], []).append(m)
        except tarfile.TarError as e:
            raise InputError(f"{uri}: not a readable tar shard ({e})") from e
        for key, members in samples.items():
            img = next((m for m in members if m.name.lower().endswith(IMAGE_EXTS)), None)
            if img is None:
                exts = sorted(_wds_key(m.name)[1] for m in members)
                out.append(entry(key, f"{uri}#{key}", uri, pre_status=Status.UNSUPPORTED.value,
                                 pre_error=f"sample has no image member (extensions: {exts})"))
            else:
                out.append(entry(key, f"{uri}#{img.name}", uri, offset=img.offset_data, length=img.size))
    return out


def _read_table(uri: str) -> pa.Table:
    low = uri.lower()
    with storage.open_read(uri) as f:
        if low.endswith(".parquet"):
            return pq.read_table(f)
        if low.endswith(".csv"):
            import pyarrow.csv as pcsv

            return pcsv.read_csv(f)
        import pyarrow.json as pjson

        return pjson.read_json(f)


URI_COLUMNS = ("uri", "url", "path", "image_uri", "image_url")
ID_COLUMNS = ("image_id", "id", "key")


def index_manifest(files: Sequence[str], options: InputOptions) -> List[Dict]:
    """One entry per distinct (id, URI) manifest row. Relative paths resolve against the manifest's directory."""
    out, seen = [], set()
    for uri in files:
        t = _read_table(uri)
        ucol = options.uri_column or next((c for c in URI_COLUMNS if c in t.column_names), None)
        if ucol not in t.column_names:
            raise InputError(f"manifest {uri}: no URI column (looked for {options.uri_column or URI_COLUMNS}; "
                             f"has {t.column_names})")
        icol = next((c for c in (options.id_column, *ID_COLUMNS) if c in t.column_names), None)
        uris = t.column(ucol).to_pylist()
        ids = t.column(icol).to_pylist() if icol else [None] * len(uris)
        base = posixpath.dirname(uri) if storage.is_remote(uri) else os.path.dirname(uri)
        for u, i in zip(uris, ids):
            if not u:
                raise InputError(f"manifest {uri}: empty URI in column {ucol!r}")
            full = u if (storage.is_remote(u) or os.path.isabs(u)) else storage.join(base, u)
            full = storage.normalize(full)
            image_id = str(i) if i is not None else stable_id(full)
            if (image_id, full) in seen:  # the same URI listed twice (same or no id): one input, one row
                continue
            seen.add((image_id, full))
            out.append(entry(image_id, full, full))
    return out


class Fetched(NamedTuple):
    """One row's bytes, or the status (``unsupported``, ``read_error``) and error explaining why there are none."""

    data: Optional[bytes]
    status: Optional[str] = None
    error: Optional[str] = None


def fetch_bytes(rows: Sequence[Dict], bytes_column: str, threads: int = 1) -> List[Fetched]:
    """For each index row its bytes, or a status and error: a local path that is not a regular file (FIFO,
    socket, device, directory) is ``unsupported`` and never read; a missing/unreadable object is
    ``read_error``. Never raises for one bad row. Objects are read ``threads`` at a time (rows inside Parquet
    files in order, one row-group read per group)."""
    parquet_cache: Dict[Tuple[str, int], pa.Array] = {}

    def fetch(r: Dict) -> Fetched:
        try:
            return Fetched(_fetch_one(r, bytes_column, parquet_cache))
        except NotRegularFile as e:
            return Fetched(None, Status.UNSUPPORTED.value, f"not a regular file: {e.what}")
        except Exception as e:  # noqa: BLE001 - a missing/unreadable object is this row's problem
            return Fetched(None, Status.READ_ERROR.value, _error_text(e))
    if threads <= 1 or any(r["row_group"] >= 0 for r in rows):
        return [fetch(r) for r in rows]
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fetch, rows))


def _error_text(e: BaseException) -> str:
    """``Type: message``, plus the object store's error code (e.g. ``SlowDown``) when it gave one."""
    text = f"{type(e).__name__}: {e}"
    code = (getattr(e.__cause__, "response", None) or {}).get("Error", {}).get("Code")
    return f"{text} ({code})" if code and code not in text else text


def _fetch_one(r: Dict, bytes_column: str, cache: Dict) -> Optional[bytes]:
    if r["row_group"] >= 0:
        key = (r["path"], r["row_group"])
        if key not in cache:
            with storage.open_read(r["path"]) as f:
                cache[key] = pq.ParquetFile(f).read_row_group(r["row_group"], columns=[bytes_column]).column(0)
        return cache[key][r["row"]].as_py()
    if r["offset"] >= 0:
        return storage.read_bytes(r["path"], r["offset"], r["offset"] + r["length"])
    return storage.read_bytes(r["path"])


def index_unit(kind: str, unit: List, options: InputOptions) -> pa.Table:
    """The index rows (``INDEX_SCHEMA``) of one unit of work: a chunk of listed images (``(uri, not_regular)``
    pairs), or a list of container files."""
    if kind == "images":
        rows = image_rows(unit)
    elif kind == "parquet":
        rows = index_parquet(unit, options)
    elif kind == "webdataset":
        rows = index_webdataset(unit)
    elif kind == "manifest":
        rows = index_manifest(unit, options)
    else:
        raise InputError(f"--input-format {kind!r}; valid: {', '.join(INPUT_FORMATS)}")
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)


def build_index(uri: str, fmt: str, options: InputOptions = InputOptions()) -> pa.Table:
    """The whole index (``INDEX_SCHEMA``) of ``uri`` in this process, sorted by ``image_id``: for small inputs
    and tests (the job plans with ``jobs.planner``, which never holds the index in one process).

    Raises ``InputError`` if the input does not exist, holds no inputs, or repeats an image id.
    """
    chunks: List[List[Tuple[str, Optional[str]]]] = []
    kind, files = scan_input(uri, fmt, chunks.append)
    units = chunks if kind == "images" else [[f] for f in files]
    tables = [index_unit(kind, u, options) for u in units]
    table = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()
    if table.num_rows == 0:
        raise InputError(f"input {uri} ({kind}): no inputs found")
    return distinct_inputs(table, uri)
