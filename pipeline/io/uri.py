"""Literal URIs: a local path or ``scheme://bucket/key`` → (filesystem, path), and reads/writes by path.

Names are never reinterpreted: the scheme is split off only at ``://`` (no fsspec URL chains, so
``scene::01.jpg`` is one file name), and S3 objects are read, written and stat'ed with the bucket and
key given to the S3 call explicitly (no query strings, so ``img?versionId=3.jpg`` is one key; ``#``,
``%``, spaces, ``[``, ``*`` and non-ASCII are literal too). Local reads open with ``O_NONBLOCK`` and
refuse anything that is not a regular file (``NotRegularFile``), so a FIFO or a device never blocks.
Local writes are atomic (temp file + rename); S3 writes are a single PUT.

    fs, path = filesystem("s3://bucket/a::b.jpg")   # (S3FileSystem, "bucket/a::b.jpg")
    data = read_bytes("/data/scene::01.jpg", 0, 1024)
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import uuid
from typing import Any, BinaryIO, Dict, Iterator, Optional, Tuple

import fsspec
from fsspec.asyn import sync
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile

LOCAL = "file"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


class NotRegularFile(OSError):
    """A local path names a FIFO, socket, device or directory; it is refused before any byte is read."""

    def __init__(self, path: str, what: str):
        super().__init__(f"{path}: not a regular file: {what}")
        self.path, self.what = path, what


def split(uri: str) -> Tuple[str, str]:
    """(protocol, path). Only ``scheme://`` is a protocol; ``file://`` and plain paths are ``"file"``.

    The path is everything after ``://`` (``bucket/key`` for S3), or the local path as given (relative
    paths stay relative); nothing in it is parsed.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return LOCAL, uri
    return (LOCAL, rest) if scheme == LOCAL else (scheme, rest)


def is_remote(uri: str) -> bool:
    """True for ``scheme://`` URIs other than ``file://``."""
    return split(uri)[0] != LOCAL


def filesystem(uri: str, **options: Any) -> Tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem instance, path inside it); ``options`` go to the filesystem (e.g. S3 ``endpoint_url``)."""
    protocol, path = split(uri)
    if protocol == LOCAL:
        return LocalFileSystem(**options), path
    return fsspec.filesystem(protocol, **options), path


def describe_mode(mode: int) -> str:
    """What an ``st_mode`` is, in words: ``"FIFO"``, ``"socket"``, ``"directory"``, ..."""
    for test, what in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return what
    return "special file"


def non_regular_kind(path: str) -> Optional[str]:
    """What a local path is when it is not a regular file (symlinks followed), else None (also when absent)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else describe_mode(mode)


def _open_local(path: str) -> BinaryIO:
    """Open a local regular file for reading; ``NotRegularFile`` for anything else, without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:  # a socket cannot be opened at all (ENXIO); some systems refuse directories (EISDIR)
        what = non_regular_kind(path)
        if what is not None:
            raise NotRegularFile(path, what) from e
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, describe_mode(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ---- S3: every call names Bucket and Key explicitly --------------------------------------------------
def _bucket_key(path: str) -> Tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


async def _s3_get(fs: fsspec.AbstractFileSystem, bucket: str, key: str, start: Optional[int],
                  end: Optional[int]) -> bytes:
    """GET an object (or ``[start, end)`` of it), retried like s3fs's own reads (call and body together)."""
    from s3fs.core import _error_wrapper

    extra = {}
    if start or end is not None:
        extra["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"

    async def call_and_read() -> bytes:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    return await _error_wrapper(call_and_read, retries=fs.retries)


def _s3_info(fs: fsspec.AbstractFileSystem, path: str) -> Optional[Dict[str, Any]]:
    bucket, key = _bucket_key(path)
    if key:
        try:
            head = fs.call_s3("head_object", Bucket=bucket, Key=key)
            return {"type": "file", "size": head["ContentLength"], "tag": head.get("ETag", "")}
        except FileNotFoundError:
            pass
    prefix = f"{key.rstrip('/')}/" if key else ""
    try:
        listing = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except FileNotFoundError:  # no such bucket
        return None
    return {"type": "directory", "size": 0, "tag": ""} if listing.get("KeyCount") else None


class _S3ReadFile(AbstractBufferedFile):
    """A seekable, read-ahead buffered S3 object whose ranges are fetched by explicit bucket and key."""

    def __init__(self, fs: fsspec.AbstractFileSystem, bucket: str, key: str, size: int):
        self.bucket, self.key = bucket, key
        super().__init__(fs, f"{bucket}/{key}", mode="rb", size=size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return sync(self.fs.loop, _s3_get, self.fs, self.bucket, self.key, start, end)


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


# ---- public helpers ----------------------------------------------------------------------------------
def info(uri: str) -> Optional[Dict[str, Any]]:
    """``{"type": "file" | "directory" | "other", "size", "tag"}`` of ``uri``, or None when it does not exist.

    ``other`` is a local FIFO, socket or device; ``tag`` changes when an object is replaced (ETag/mtime).
    """
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        kind = "file" if stat.S_ISREG(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "other"
        return {"type": kind, "size": st.st_size, "tag": str(st.st_mtime_ns)}
    if _is_s3(fs):
        return _s3_info(fs, path)
    try:
        found = fs.info(path)
    except FileNotFoundError:
        return None
    return {"type": "file" if found.get("type") == "file" else "directory", "size": found.get("size") or 0,
            "tag": str(found.get("ETag", found.get("mtime", "")))}


def iter_files(uri: str) -> Iterator[Tuple[str, Optional[str]]]:
    """Every file under the directory or prefix ``uri`` (recursive), streamed as the store lists them (not
    sorted; memory stays flat for any count): ``(uri, None)`` for a regular file or an object, ``(uri, what)``
    for a local entry that is not a regular file ("FIFO", "socket", ..., or "directory" for a symlink to one;
    symlinked directories are not descended into). Local: ``os.scandir``; S3: ``list_objects_v2`` pages."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        yield from _iter_local(path)
    elif _is_s3(fs):
        bucket, key = _bucket_key(path.rstrip("/"))
        prefix = f"{key}/" if key else ""
        kwargs: Dict[str, Any] = {}
        while True:
            page = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, **kwargs)
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    yield f"s3://{bucket}/{obj['Key']}", None
            if not page.get("IsTruncated"):
                return
            kwargs = {"ContinuationToken": page["NextContinuationToken"]}
    else:
        for p in fs.find(path):
            yield fs.unstrip_protocol(p), None


def _iter_local(root: str) -> Iterator[Tuple[str, Optional[str]]]:
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=True):
                    yield e.path, None
                else:  # a FIFO, socket, device, a symlink to a directory; a dangling symlink reads as missing
                    yield e.path, non_regular_kind(e.path)


def open_read(uri: str) -> BinaryIO:
    """A seekable binary file for reading ``uri`` (close it, or use it as a context manager)."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        return _open_local(path)
    if _is_s3(fs):
        bucket, key = _bucket_key(path)
        head = fs.call_s3("head_object", Bucket=bucket, Key=key)
        return _S3ReadFile(fs, bucket, key, head["ContentLength"])
    return fs.open(path, "rb")


def read_bytes(uri: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
    """The bytes of ``uri``, or of ``[start, end)`` when given (shorter if the object ends first)."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        with _open_local(path) as f:
            f.seek(start or 0)
            return f.read() if end is None else f.read(max(end - (start or 0), 0))
    if _is_s3(fs):
        if end is not None and end <= (start or 0):
            return b""
        return sync(fs.loop, _s3_get, fs, *_bucket_key(path), start, end)
    return fs.cat_file(path, start=start, end=end)


def read_text(uri: str) -> str:
    """A small UTF-8 text file, decoded strictly (``UnicodeDecodeError`` on invalid bytes), with universal
    newlines (``\\r\\n`` and ``\\r`` read as ``\\n``, as ``open(path)`` does)."""
    return read_bytes(uri).decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri``, replacing it. Local: parents created, temp file + rename; S3: one PUT."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        with _local_atomic(path) as f:
            f.write(data)
    elif _is_s3(fs):
        bucket, key = _bucket_key(path)
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data)
    else:
        fs.pipe_file(path, data)


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[BinaryIO]:
    """A binary file to stream into; ``uri`` appears (replaced) only when the block exits without error.

    Local: a temp file next to it, renamed; S3: a temp file on disk, uploaded in one PUT at the end.
    """
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        with _local_atomic(path) as f:
            yield f
    elif _is_s3(fs):
        bucket, key = _bucket_key(path)
        with tempfile.TemporaryFile() as f:
            yield f
            f.seek(0)
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=f)
    else:
        with fs.open(path, "wb") as f:
            yield f


def remove(uri: str) -> None:
    """Delete the file/object ``uri``."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        os.unlink(path)
    elif _is_s3(fs):
        bucket, key = _bucket_key(path)
        fs.call_s3("delete_object", Bucket=bucket, Key=key)
    else:
        fs.rm_file(path)


@contextlib.contextmanager
def _local_atomic(path: str) -> Iterator[BinaryIO]:
    """A temp file next to ``path`` (parents created), renamed over ``path`` on success, removed on failure."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # mode as umask allows
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
