"""s3:// in and out against a real S3-compatible server (moto, 127.0.0.1): images, weights, vocabulary
and templates read from the bucket, the run committed to the bucket; credentials come only from the
environment and never appear in any output."""
from __future__ import annotations

import collections
import pathlib
import uuid

import pytest

from tests.job_fixtures import (
    TEST_SECRET,
    assert_masks_match_inprocess,
    committed_rows,
    expected_status_by_name,
    own_text_cache,
    run_cli,
    s3_client,
    sample_files,
    upload_dir,
)

pytestmark = pytest.mark.slow


def test_s3_in_and_out(ray_local, moto_endpoint, image_dir, model_args, tiny_weights, tiny_vocab_file,
                       tiny_templates_file, tmp_path, capfd):
    bucket = f"rl-{uuid.uuid4().hex[:8]}"
    upload_dir(moto_endpoint, image_dir, bucket, "raw/images")
    c = s3_client(moto_endpoint)
    for key, path in (("models/tiny.pt", tiny_weights), ("vocab/v.txt", tiny_vocab_file),
                      ("vocab/t.txt", tiny_templates_file)):
        c.put_object(Bucket=bucket, Key=key, Body=pathlib.Path(path).read_bytes())
    args = own_text_cache(model_args)  # the text cache goes to the S3 output (checked below)
    for flag, key in (("--weights", "models/tiny.pt"), ("--vocabulary", "vocab/v.txt"), ("--templates", "vocab/t.txt")):
        args[args.index(flag) + 1] = f"s3://{bucket}/{key}"
    out = f"s3://{bucket}/labels"
    summary = run_cli(["--input", f"s3://{bucket}/raw/images/", "--output", out, "--s3-endpoint", moto_endpoint, *args])

    rows = committed_rows(out)
    names = [r["source_uri"].rsplit("/", 1)[-1] for r in rows]
    assert all(r["source_uri"].startswith(f"s3://{bucket}/raw/images/") for r in rows)
    assert collections.Counter(names) == collections.Counter(list(expected_status_by_name()))
    assert {n: r["status"] for n, r in zip(names, rows)} == expected_status_by_name()
    assert summary["rows"] == len(rows)
    assert rows[0]["weights_digest"].startswith("sha256:")
    files = {n: d for n, (d, _) in sample_files().items()}
    local_args = list(model_args)  # same model from local files: identical weights digest and vocabulary
    assert assert_masks_match_inprocess(rows, files, local_args) == sum(
        s == "ok" for s in expected_status_by_name().values())

    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="labels/")["Contents"]]
    run = f"labels/runs/{summary['run_id']}/"
    assert f"{run}_SUCCESS.json" in keys and f"{run}_plan.json" in keys
    assert any(k.startswith(f"{run}_plan/") and k.endswith(".parquet") for k in keys)  # the plan files
    assert any(k.startswith("labels/_text_cache/") for k in keys)
    assert not any("_write_probe" in k or ".tmp" in k for k in keys)
    blobs = b"".join(c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys)
    captured = capfd.readouterr()
    for text in (blobs, (captured.out + captured.err).encode()):
        assert TEST_SECRET.encode() not in text
