"""Object-storage helpers over fsspec: local paths and s3:// (custom endpoint via AWS_ENDPOINT_URL).

Credentials are never handled here: s3fs/botocore read them from the environment or the instance.
Writes of committed files are *no-clobber*: ``write_new`` refuses to replace an existing object, and
local files appear atomically (temp file + hard link), so a reader never sees a partial file.
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any, List, Tuple

import fsspec


def apply_endpoint(endpoint: str | None) -> None:
    """Make every s3fs/botocore client in this process use ``endpoint`` (a URL, not a secret)."""
    if endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def normalize(uri: str) -> str:
    """Local paths → absolute paths without a trailing slash; remote URIs keep their scheme."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if not is_remote(uri):
        return os.path.abspath(os.path.expanduser(uri))
    return uri.rstrip("/")


def fs_for(uri: str) -> Tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without scheme) for a URI or local path."""
    return fsspec.core.url_to_fs(normalize(uri))


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri, *parts) if is_remote(uri) else os.path.join(uri, *parts)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Inverse of ``fs_for``: put the scheme back on a path returned by ``fs.find``/``glob``."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def exists(uri: str) -> bool:
    fs, path = fs_for(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = fs_for(uri)
    return fs.cat_file(path)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def list_dir(uri: str) -> List[str]:
    """Immediate children (URIs) of a directory/prefix; empty when it does not exist."""
    fs, path = fs_for(uri)
    fs.invalidate_cache()
    if not fs.exists(path):
        return []
    return sorted(to_uri(fs, p) for p in fs.ls(path, detail=False))


def write_new(uri: str, data: bytes) -> bool:
    """Write ``data`` to ``uri`` unless it exists. Returns False (and writes nothing) if it did.

    Local: temp file in the same directory, then ``os.link`` (atomic, fails if the name exists).
    Object stores: a single PUT is atomic; the existence check races only with a concurrent writer of
    the same run, which scheduling rules out (unique submission ids).
    """
    fs, path = fs_for(uri)
    if not is_remote(uri):
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
    fs.invalidate_cache()
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


def write_json_new(uri: str, obj: Any) -> bool:
    return write_new(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def check_writable(uri: str) -> None:
    """Raise ``PermissionError``/``OSError`` with the URI named unless a probe object can be written there."""
    fs, path = fs_for(uri)
    probe = join(uri, f"_write_probe-{uuid.uuid4().hex}")
    try:
        if not is_remote(uri):
            os.makedirs(path, exist_ok=True)
        fs_probe, probe_path = fs_for(probe)
        fs_probe.pipe_file(probe_path, b"")
        fs_probe.rm_file(probe_path)
    except Exception as e:  # noqa: BLE001 - re-raised with the output named
        raise PermissionError(f"output {uri} is not writable: {type(e).__name__}: {e}") from e
