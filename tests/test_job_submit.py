"""`ray job submit` for real: a Ray head with its job server (``tests/ray_head.py``), the README's cluster
recipe run as written (only address, submission id, bucket and the hardware line substituted), inputs,
weights and output on a real S3 server (moto). Checks: SUCCEEDED with exactly the input rows and the commit in
``code_version`` (the job's copy of the project has no ``.git``), a relative ``--output`` refused, an input
where nothing can be labeled ends FAILED, ``ray job stop`` mid-run then a resubmit of the same ``--run-id``
commits every image exactly once."""
from __future__ import annotations

import collections
import io
import json
import re
import time
import uuid

import pytest

from jobs import storage
from tests.crash_helpers import REPO, write_images
from tests.job_fixtures import committed_rows, s3_client, upload_dir
from tests.ray_head import RayHead

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("job_server")]  # module fixture: one worker
RECIPE_HARDWARE = "--num-actors 4 --gpus-per-actor 1 --cpus-per-actor 2 --dtype fp16 --images-per-call 8"
TEST_HARDWARE = ("--num-actors 1 --gpus-per-actor 0 --cpus-per-actor 1 --dtype fp32 --images-per-call 4 "
                 "--model tests/data/tiny-vit.json --shard-size 4 --s3-endpoint {endpoint}")


def recipe() -> str:
    """The README's cluster recipe block (shell lines, comments kept)."""
    text = (REPO / "README.md").read_text()
    after = text.split("<!-- cluster-recipe", 1)[1]
    return re.search(r"```bash\n(.*?)```", after, re.S).group(1)


@pytest.fixture(scope="module")
def head():
    h = RayHead().start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def bucket(moto_endpoint, tiny_weights, tmp_path_factory):
    """A bucket with 10 small images under images/ and the tiny weights under the recipe's weights key."""
    storage.apply_endpoint(moto_endpoint)  # this process reads the job's output back from the same server
    name = f"rl-submit-{uuid.uuid4().hex[:8]}"
    images = tmp_path_factory.mktemp("submit-images")
    write_images(images, 10, seed=5)
    upload_dir(moto_endpoint, images, name, "images")
    c = s3_client(moto_endpoint)
    with open(tiny_weights, "rb") as f:  # the recipe names ViT-B-16.pt; the test puts the tiny model there
        c.put_object(Bucket=name, Key="models/ViT-B-16.pt", Body=f.read())
    return name


def _test_command(moto_endpoint: str, head: RayHead, bucket: str, submission_id: str) -> str:
    """The recipe with the documented substitutions; each substituted text must occur exactly once."""
    text = recipe()
    for old, new in (("http://127.0.0.1:8265", head.url), ("labels-voc21-0001", submission_id),
                     (RECIPE_HARDWARE, TEST_HARDWARE.format(endpoint=moto_endpoint))):
        assert text.count(old) == 1, f"README recipe changed: {old!r}"
        text = text.replace(old, new)
    return text.replace("BUCKET", bucket)


def _entrypoint(moto_endpoint: str, bucket: str, *extra: str) -> list:
    return ["python", "-m", "jobs.label", "--preset", "voc21", "--weights", f"s3://{bucket}/models/ViT-B-16.pt",
            *TEST_HARDWARE.format(endpoint=moto_endpoint).split(), *extra]


def _image_names(rows) -> collections.Counter:
    return collections.Counter(r["source_uri"].rsplit("/", 1)[-1] for r in rows)


def test_readme_recipe_succeeds_with_exact_rows_and_commit(head, bucket, moto_endpoint):
    sid = f"labels-recipe-{uuid.uuid4().hex[:6]}"
    done = head.run_shell(_test_command(moto_endpoint, head, bucket, sid))
    logs = head.logs(sid)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert head.status(sid) == "SUCCEEDED"
    rows = committed_rows(f"s3://{bucket}/labels")
    assert _image_names(rows) == collections.Counter(f"img-{i:03d}.jpg" for i in range(10))
    assert {r["status"] for r in rows} == {"ok"}
    stamp = json.loads((REPO / "schemas" / "_stamp.json").read_text())  # written by the recipe's first line
    assert stamp["code_version"].startswith("0.1.0+g")
    assert {r["code_version"] for r in rows} == {stamp["code_version"]}  # the commit, without .git in the job
    assert "text embeddings: batch" in logs  # progress while encoding the vocabulary
    assert f"output: s3://{bucket}/labels/runs/" in logs
    assert "memory per worker" not in logs  # Ray Data's high-memory warning: the decode reservation fits


def test_relative_output_is_refused(head, bucket, moto_endpoint):
    sid = f"labels-relative-{uuid.uuid4().hex[:6]}"
    done = head.submit(sid, _entrypoint(moto_endpoint, bucket, "--input", f"s3://{bucket}/images/",
                                        "--output", "out/relative"))
    logs = head.logs(sid)
    assert done.returncode != 0 and head.status(sid) == "FAILED"
    assert "error: --output 'out/relative' is a relative path" in logs and "Traceback" not in logs
    assert "--shared-fs" in logs  # says what to use instead


def test_nothing_labelable_ends_failed(head, bucket, moto_endpoint):
    c = s3_client(moto_endpoint)
    for i in range(3):
        c.put_object(Bucket=bucket, Key=f"bad/b{i}.jpg", Body=b"<html>403 Forbidden</html>")
    sid = f"labels-bad-{uuid.uuid4().hex[:6]}"
    out = f"s3://{bucket}/bad-labels"
    done = head.submit(sid, _entrypoint(moto_endpoint, bucket, "--input", f"s3://{bucket}/bad/", "--output", out))
    logs = head.logs(sid)
    assert done.returncode != 0 and head.status(sid) == "FAILED"
    assert "no image was labeled: all 3 rows failed" in logs and "3 x decode_error" in logs
    rows = committed_rows(out)  # committed anyway: the rows are true
    assert len(rows) == 3 and {r["status"] for r in rows} == {"decode_error"}


def test_stop_mid_run_then_resubmit_is_exactly_once(head, bucket, moto_endpoint, tmp_path):
    names = write_images(tmp_path / "many", 28, seed=9)
    upload_dir(moto_endpoint, tmp_path / "many", bucket, "many")
    out_prefix, run_id = "stop-labels", "stop-run"
    c = s3_client(moto_endpoint)

    def parts() -> dict:
        listed = c.list_objects_v2(Bucket=bucket, Prefix=f"{out_prefix}/runs/{run_id}/part-").get("Contents", [])
        return {o["Key"]: o["ETag"] for o in listed}
    args = _entrypoint(moto_endpoint, bucket, "--input", f"s3://{bucket}/many/", "--output",
                       f"s3://{bucket}/{out_prefix}", "--run-id", run_id, "--images-per-call", "2")
    first = f"labels-stop-{uuid.uuid4().hex[:6]}"
    assert head.submit(first, args, wait=False).returncode == 0
    deadline = time.time() + 400
    while not parts() and time.time() < deadline:
        time.sleep(0.5)
    assert parts(), "no part was committed before the deadline"
    assert head.cli("job", "stop", first).returncode == 0
    while head.status(first) not in ("STOPPED", "FAILED", "SUCCEEDED") and time.time() < deadline:
        time.sleep(1)
    assert head.status(first) == "STOPPED"
    at_stop = parts()
    assert len(at_stop) < 7, "the run finished before it could be stopped: stop it earlier"

    second = f"labels-resume-{uuid.uuid4().hex[:6]}"
    done = head.submit(second, args)
    assert done.returncode == 0 and head.status(second) == "SUCCEEDED", head.logs(second)[-3000:]
    rows = committed_rows(f"s3://{bucket}/{out_prefix}")
    assert _image_names(rows) == collections.Counter(names)  # each image exactly once
    assert {k: v for k, v in parts().items() if k in at_stop} == at_stop  # committed parts never rewritten
    body = c.get_object(Bucket=bucket, Key=f"{out_prefix}/runs/{run_id}/_SUCCESS.json")["Body"].read()
    assert json.load(io.BytesIO(body))["attempt"]["shards_resumed"] == len(at_stop)
