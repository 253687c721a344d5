"""Object-storage helpers for the job: local paths and s3:// (custom endpoint via AWS_ENDPOINT_URL).

Built on ``pipeline.io.uri``: names are literal (no fsspec URL chains, no query strings) and only regular
local files are read. Credentials are never handled here: s3fs/botocore read them from the environment
or the instance. Writes of committed files are *no-clobber*: ``write_new`` refuses to replace an existing
object, and local files appear atomically (temp file + hard link), so a reader never sees a partial file.
"""
from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from typing import Any, BinaryIO, Callable, List, Optional, Tuple

import fsspec

from pipeline.io import uri as uris


def apply_endpoint(endpoint: str | None) -> None:
    """Make every s3fs/botocore client in this process use ``endpoint`` (a URL, not a secret)."""
    if endpoint and os.environ.get("AWS_ENDPOINT_URL") != endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        try:  # cached s3fs instances would keep talking to the previous endpoint
            fsspec.get_filesystem_class("s3").clear_instance_cache()
        except (ImportError, ValueError):
            pass


def is_remote(uri: str) -> bool:
    """True for ``scheme://`` URIs other than ``file://``."""
    return uris.is_remote(uri)


def normalize(uri: str) -> str:
    """Local paths → absolute paths without a trailing slash; remote URIs keep their scheme."""
    protocol, path = uris.split(uri)
    if protocol == uris.LOCAL:
        return os.path.abspath(os.path.expanduser(path))
    return uri.rstrip("/")


def fs_for(uri: str) -> Tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without scheme) for a URI or local path, taken literally (``pipeline.io.uri``)."""
    return uris.filesystem(normalize(uri))


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri, *parts) if is_remote(uri) else os.path.join(uri, *parts)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Inverse of ``fs_for``: put the scheme back on a path returned by ``fs.find``/``glob``."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def retrying(fn: Callable[[], Any], what: str, attempts: int = 6, base_delay: float = 0.2) -> Any:
    """Call ``fn``; retry transient failures with exponential backoff. ``FileNotFoundError``,
    ``PermissionError`` and ``NotRegularFile`` are answers, not faults, and propagate at once."""
    for attempt in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, uris.NotRegularFile):
            raise
        except Exception as e:  # noqa: BLE001 - object stores raise many types for 5xx / dropped connections
            if attempt == attempts - 1:
                raise OSError(f"{what}: failed after {attempts} attempts: {type(e).__name__}: {e}") from e
            time.sleep(base_delay * 2 ** attempt)
    raise AssertionError("unreachable")


def kind(uri: str) -> Optional[str]:
    """"file", "directory", "other" (a local FIFO, socket or device) or None (absent). Unlike ``fs.exists``
    — which answers False when the store errors — a transient error is retried and a persistent one
    raised, never read as "absent"."""
    def probe() -> Optional[str]:
        found = uris.info(normalize(uri))
        return found["type"] if found else None
    return retrying(probe, f"stat {uri}")


def exists(uri: str) -> bool:
    return kind(uri) is not None


def read_bytes(uri: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
    """The bytes of ``uri`` (or of ``[start, end)``); local files must be regular (``NotRegularFile``)."""
    return uris.read_bytes(normalize(uri), start, end)


def open_read(uri: str) -> BinaryIO:
    """A seekable binary file for reading ``uri``; local files must be regular (``NotRegularFile``)."""
    return uris.open_read(normalize(uri))


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def list_dir(uri: str) -> List[str]:
    """Immediate children (URIs) of a directory/prefix; empty when it does not exist."""
    fs, path = fs_for(uri)
    if kind(uri) is None:
        return []
    fs.invalidate_cache()
    return sorted(to_uri(fs, p) for p in retrying(lambda: fs.ls(path, detail=False), f"list {uri}"))


def write_new(uri: str, data: bytes) -> bool:
    """Write ``data`` to ``uri`` unless it exists. Returns False (and writes nothing) if it did.

    Local: temp file in the same directory, then ``os.link`` (atomic, fails if the name exists).
    Object stores: a single PUT is atomic; the existence check races only with a concurrent writer of
    the same run, which the run lease (``jobs/lease.py``) rules out.
    """
    if not is_remote(uri):
        path = normalize(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    if kind(uri) is not None:
        return False
    # a PUT is idempotent: same bytes, same key
    retrying(lambda: uris.write_bytes(normalize(uri), data), f"write {uri}")
    return True


def write_json_new(uri: str, obj: Any) -> bool:
    return write_new(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def check_writable(uri: str) -> None:
    """Raise ``PermissionError``/``OSError`` with the URI named unless a probe object can be written there."""
    probe = normalize(join(uri, f"_write_probe-{uuid.uuid4().hex}"))
    try:
        if not is_remote(uri):
            os.makedirs(normalize(uri), exist_ok=True)
        uris.write_bytes(probe, b"")
        uris.remove(probe)
    except Exception as e:  # noqa: BLE001 - re-raised with the output named
        raise PermissionError(f"output {uri} is not writable: {type(e).__name__}: {e}") from e


# ---- conditional create (run leases, jobs/lease.py) ------------------------------------------------------
class ConditionalWriteUnsupported(OSError):
    """The object store accepted a second create of one key: it ignores ``If-None-Match: *``."""


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create ``uri`` holding ``data`` iff no object/file of that name exists, atomically: True if this call
    created it, False if it existed (or a concurrent create won).

    Local: a temp file, then ``os.link`` to the name (the kernel creates the name only if absent, like
    ``O_EXCL``, and readers never see a partial file). S3: one conditional PUT with ``If-None-Match: *`` (AWS S3
    since 2024-08, MinIO, moto 5.2.5's server): 412 PreconditionFailed means it existed, 409
    ConditionalRequestConflict means a concurrent conditional write is in flight (the caller re-reads). A store
    that ignores the header is detected by ``check_conditional_create``, not here."""
    if not is_remote(uri):
        return write_new(uri, data)
    fs, path = fs_for(uri)
    if "s3" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        raise OSError(f"{uri}: conditional create is implemented for local paths and s3:// only")
    from botocore.exceptions import ClientError
    from fsspec.asyn import sync

    bucket, _, key = path.partition("/")

    async def put() -> bool:
        await fs.set_session()
        s3 = await fs.get_s3(bucket)
        try:
            await s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code"))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise
        return True

    created = retrying(lambda: sync(fs.loop, put), f"create {uri}")
    fs.invalidate_cache()
    return created


def check_conditional_create(prefix: str) -> None:
    """Prove on the store itself that ``create_exclusive`` under ``prefix`` is exclusive: create a probe object
    twice; raise ``ConditionalWriteUnsupported`` when the second create is accepted (the store ignores
    ``If-None-Match``, so two drivers could both win a lease). Local paths need no probe."""
    if not is_remote(prefix):
        return
    probe = join(prefix, f"_conditional_probe-{uuid.uuid4().hex}")
    try:
        first, second = create_exclusive(probe, b"1"), create_exclusive(probe, b"2")
    finally:
        try:
            uris.remove(normalize(probe))
        except OSError:
            pass
    if not first or second:
        raise ConditionalWriteUnsupported(
            f"output {prefix}: the object store does not honour conditional writes (If-None-Match: *): a second "
            "create of one key was accepted, so two runs of one config could both start; use a store that "
            "supports them (AWS S3, MinIO)")
