"""``pipeline.io.uri``: names are literal (no fsspec URL chains, no query strings), only regular local files are
read (a FIFO is refused at once, never blocks), writes appear whole. Local files and a real moto S3 server."""
from __future__ import annotations

import os
import socket
import uuid

import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.io import uri
from tests.job_fixtures import s3_client

HOSTILE = ["scene::01.jpg", "q?x.jpg", "img?versionId=3.jpg", "a#b.jpg", "100%.jpg", "sp ace.jpg",
           "brackets[1].jpg", "star*.jpg", "ünï.jpg"]


def test_split_only_at_scheme():
    assert uri.split("scene::01.jpg") == ("file", "scene::01.jpg")
    assert uri.split("/d/a?b#c::d") == ("file", "/d/a?b#c::d")
    assert uri.split("file:///d/x::y?versionId=1") == ("file", "/d/x::y?versionId=1")
    assert uri.split("s3://bkt/k::1?versionId=3#f") == ("s3", "bkt/k::1?versionId=3#f")
    assert uri.split("dir/a://b.jpg") == ("file", "dir/a://b.jpg")  # "dir/a" is not a scheme
    assert uri.split("simplecache::s3://b/k") == ("file", "simplecache::s3://b/k")  # no chains
    assert uri.is_remote("s3://b/k") and not uri.is_remote("file:///x") and not uri.is_remote("x::y")


def test_filesystem_keeps_paths_literal():
    fs, path = uri.filesystem("/d/scene::01.jpg")
    assert isinstance(fs, LocalFileSystem) and path == "/d/scene::01.jpg"
    assert uri.filesystem("file:///d/a?b")[1] == "/d/a?b"
    fs, path = uri.filesystem("s3://bkt/p/img?versionId=3.jpg")
    assert "s3" in fs.protocol and path == "bkt/p/img?versionId=3.jpg"


def test_local_reads_are_literal(tmp_path):
    (tmp_path / "scene").write_bytes(b"the wrong file")
    for i, name in enumerate(HOSTILE):
        (tmp_path / name).write_bytes(f"{i}:{name}".encode())
    for i, name in enumerate(HOSTILE):
        want = f"{i}:{name}".encode()
        assert uri.read_bytes(str(tmp_path / name)) == want
        assert uri.read_bytes(f"file://{tmp_path / name}") == want
        assert uri.read_bytes(str(tmp_path / name), 1, 4) == want[1:4]
        with uri.open_read(str(tmp_path / name)) as f:
            f.seek(2)
            assert f.read() == want[2:]
        assert uri.info(str(tmp_path / name))["type"] == "file"


def test_relative_paths_stay_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a::b#c.txt").write_text("relative\r\nline\n")
    assert uri.split("sub/a::b#c.txt") == ("file", "sub/a::b#c.txt")
    assert uri.read_text("sub/a::b#c.txt") == "relative\nline\n"  # universal newlines
    uri.write_bytes("out/x?y.bin", b"w")
    assert (tmp_path / "out" / "x?y.bin").read_bytes() == b"w"


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink(tmp_path / "pipe.jpg", tmp_path / "link-to-pipe.jpg")
    (tmp_path / "real.jpg").write_bytes(b"bytes")
    os.symlink(tmp_path / "real.jpg", tmp_path / "link-to-real.jpg")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock.jpg"))
        cases = (("pipe.jpg", "FIFO"), ("link-to-pipe.jpg", "FIFO"), ("sock.jpg", "socket"), (".", "directory"))
        for name, what in cases:
            with pytest.raises(uri.NotRegularFile, match=f"not a regular file: {what}") as e:
                uri.read_bytes(str(tmp_path / name))
            assert e.value.what == what == uri.non_regular_kind(str(tmp_path / name))
            with pytest.raises(uri.NotRegularFile):
                uri.open_read(str(tmp_path / name))
        assert uri.info(str(tmp_path / "sock.jpg"))["type"] == "other"
    with pytest.raises(uri.NotRegularFile, match="character device"):
        uri.read_bytes("/dev/zero")
    assert uri.read_bytes(str(tmp_path / "link-to-real.jpg")) == b"bytes"  # symlinks to regular files work
    assert uri.non_regular_kind(str(tmp_path / "link-to-real.jpg")) is None
    assert uri.non_regular_kind(str(tmp_path / "absent")) is None and uri.info(str(tmp_path / "absent")) is None
    with pytest.raises(FileNotFoundError):
        uri.read_bytes(str(tmp_path / "absent"))


def test_local_writes_appear_whole(tmp_path):
    target = tmp_path / "new" / "deep" / "r::1?.json"
    uri.write_bytes(str(target), b"first")
    uri.write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second"
    with pytest.raises(RuntimeError):
        with uri.open_write(str(target)) as f:
            f.write(b"partial")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"second" and os.listdir(target.parent) == [target.name]  # no temp left
    with uri.open_write(str(target)) as f:
        f.write(b"streamed")
    assert target.read_bytes() == b"streamed"
    uri.remove(str(target))
    assert not target.exists()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    """A fresh bucket on the session's moto server, reached through AWS_ENDPOINT_URL."""
    import fsspec

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    fsspec.get_filesystem_class("s3").clear_instance_cache()
    bucket = f"uri-{uuid.uuid4().hex[:8]}"
    s3_client(moto_endpoint).create_bucket(Bucket=bucket)
    yield bucket
    fsspec.get_filesystem_class("s3").clear_instance_cache()


def test_s3_keys_are_literal(s3_bucket, moto_endpoint):
    c = s3_client(moto_endpoint)
    c.put_object(Bucket=s3_bucket, Key="p/scene", Body=b"the wrong object")
    c.put_object(Bucket=s3_bucket, Key="p/img", Body=b"the wrong object")
    for i, name in enumerate(HOSTILE):
        c.put_object(Bucket=s3_bucket, Key=f"p/{name}", Body=f"{i}:{name}".encode() * 3)
    for i, name in enumerate(HOSTILE):
        u, want = f"s3://{s3_bucket}/p/{name}", f"{i}:{name}".encode() * 3
        assert uri.read_bytes(u) == want
        assert uri.read_bytes(u, 2, 7) == want[2:7] and uri.read_bytes(u, 3) == want[3:]
        assert uri.info(u) == {"type": "file", "size": len(want), "tag": uri.info(u)["tag"]}
        with uri.open_read(u) as f:
            f.seek(len(want) - 4)
            assert f.read() == want[-4:]
    assert uri.info(f"s3://{s3_bucket}/p")["type"] == "directory"
    assert uri.info(f"s3://{s3_bucket}/p/nope") is None and uri.info(f"s3://{s3_bucket}/nope/") is None
    with pytest.raises(FileNotFoundError):
        uri.read_bytes(f"s3://{s3_bucket}/p/nope")


def test_s3_writes_are_literal(s3_bucket, moto_endpoint):
    c = s3_client(moto_endpoint)
    u = f"s3://{s3_bucket}/out/run::1/x?versionId=2#f.json"
    uri.write_bytes(u, b"put")
    assert c.get_object(Bucket=s3_bucket, Key="out/run::1/x?versionId=2#f.json")["Body"].read() == b"put"
    with pytest.raises(RuntimeError):
        with uri.open_write(f"s3://{s3_bucket}/out/partial.bin") as f:
            f.write(b"partial")
            raise RuntimeError("writer died")
    with uri.open_write(f"s3://{s3_bucket}/out/streamed ü.bin") as f:
        f.write(b"streamed")
    keys = sorted(o["Key"] for o in c.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["out/run::1/x?versionId=2#f.json", "out/streamed ü.bin"]
    uri.remove(u)
    assert uri.info(u) is None
