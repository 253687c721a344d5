"""A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head with 2 CPUs and two worker
nodes, each with one ``segment_slot`` so the two segment actors land on different nodes; each node with its
own ``RESLABEL_CACHE``). The job runs as ``python -m jobs.label --ray-address <cluster>``:

* local-only paths are refused before any work (exit 2, nothing written);
* with inputs, weights and output on S3, the weights reach every worker node from S3, and when a worker node
  is removed mid-run the run still commits every image exactly once.
"""
from __future__ import annotations

import collections
import pathlib
import uuid

import pytest

from jobs import storage
from tests.crash_helpers import finish, launch, write_images
from tests.job_fixtures import committed_rows, own_text_cache, s3_client, upload_dir
from tests.ray_head import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multinode_cluster")]  # module fixture: one worker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    caches = tmp_path_factory.mktemp("node-caches")
    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=2, include_dashboard=False, dashboard_agent_listen_port=free_port(),
        env_vars={"RESLABEL_CACHE": str(caches / "head")}))
    workers = [c.add_node(num_cpus=1, resources={"segment_slot": 1}, env_vars={"RESLABEL_CACHE": str(caches / w)})
               for w in ("w1", "w2")]
    c.wait_for_nodes()
    yield c, workers, caches
    c.shutdown()


def _job(args, log: pathlib.Path, on_running=None, timeout: float = 600) -> int:
    proc = launch(args, log)
    if on_running is not None:
        on_running(proc)
    return finish(proc, timeout=timeout)


def test_local_paths_refused_on_multi_node(cluster, moto_endpoint, model_args, tmp_path):
    c, _, _ = cluster
    write_images(tmp_path / "in", 2)
    storage.apply_endpoint(moto_endpoint)
    bucket = f"rl-mn-{uuid.uuid4().hex[:8]}"
    s3_client(moto_endpoint).create_bucket(Bucket=bucket)
    rc = _job(["--input", str(tmp_path / "in"), "--output", f"s3://{bucket}/out", "--s3-endpoint", moto_endpoint,
               "--ray-address", c.address, *model_args], tmp_path / "job.log")
    log = (tmp_path / "job.log").read_text(errors="replace")
    assert rc == 2, log[-3000:]
    assert "error: local path(s) --input" in log and "--weights" in log and "3 alive nodes" in log
    assert "--shared-fs" in log and "Traceback" not in log
    assert "Contents" not in s3_client(moto_endpoint).list_objects_v2(Bucket=bucket)  # nothing written


def test_read_labels_refuses_a_local_run_on_multi_node(cluster, tmp_path):
    """jobs.read.read_labels in a driver connected to the 3-node cluster: a local run path is refused (its read
    tasks could run on a node without it), an explicit shared_fs passes the check."""
    import subprocess
    import sys

    from tests.consumer_fixtures import synthetic_run

    c, _, _ = cluster
    run_dir = synthetic_run(tmp_path, n_ok=2, n_failed=0)[0]
    code = ("import ray, sys\nfrom jobs.read import read_labels\nray.init(address=sys.argv[1])\n"
            "try:\n    read_labels(sys.argv[2])\nexcept Exception as e:\n    print('refused:', e)\n"
            "print('shared:', read_labels(sys.argv[2], shared_fs=True).count())\n")
    done = subprocess.run([sys.executable, "-c", code, c.address, run_dir], capture_output=True, text=True,
                          timeout=300, cwd=pathlib.Path(__file__).resolve().parents[1])
    assert "refused: local path(s) --run" in done.stdout and "3 alive nodes" in done.stdout, done.stderr[-3000:]
    assert "shared: 2" in done.stdout, done.stderr[-3000:]  # the nodes share this machine's disk here


def test_s3_run_survives_a_removed_worker_node(cluster, moto_endpoint, model_args, tiny_weights, tiny_vocab_file,
                                               tiny_templates_file, tmp_path):
    c, workers, caches = cluster
    storage.apply_endpoint(moto_endpoint)
    bucket = f"rl-mn-{uuid.uuid4().hex[:8]}"
    names = write_images(tmp_path / "in", 60, seed=4)
    upload_dir(moto_endpoint, tmp_path / "in", bucket, "images")
    s3 = s3_client(moto_endpoint)
    for key, path in (("models/tiny.pt", tiny_weights), ("vocab/v.txt", tiny_vocab_file)):
        s3.put_object(Bucket=bucket, Key=key, Body=pathlib.Path(path).read_bytes())
    args = own_text_cache(model_args)  # a local cache path would be refused on 3 nodes: the cache goes to S3
    args[args.index("--weights") + 1] = f"s3://{bucket}/models/tiny.pt"
    args[args.index("--vocabulary") + 1] = f"s3://{bucket}/vocab/v.txt"  # the templates stay a local file:
    out = f"s3://{bucket}/labels"  # small files are read by the driver and shipped, so that is allowed
    args += ["--input", f"s3://{bucket}/images/", "--output", out, "--s3-endpoint", moto_endpoint,
             "--ray-address", c.address, "--num-actors", "2", "--actor-resources", '{"segment_slot": 1}',
             "--images-per-call", "2", "--run-id", "multinode"]
    removed = []

    def remove_a_worker_mid_run(proc) -> None:
        import time

        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline:
            listed = s3.list_objects_v2(Bucket=bucket, Prefix="labels/runs/multinode/part-").get("Contents", [])
            # remove w2 once parts are being committed and its actor is up (it fetched the weights): labeling
            # starts as soon as one actor is ready, and on a loaded machine w2's may still be loading the model
            if len(listed) >= 2 and list((caches / "w2" / "weights").glob("*-tiny.pt")):
                c.remove_node(workers[1], allow_graceful=False)
                removed.append(len(listed))
                return
            time.sleep(0.2)
    rc = _job(args, tmp_path / "job.log", on_running=remove_a_worker_mid_run)
    log = (tmp_path / "job.log").read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert removed and removed[0] < 15, f"the node was not removed mid-run ({removed} of 15 parts)"
    rows = committed_rows(out)
    assert collections.Counter(r["source_uri"].rsplit("/", 1)[-1] for r in rows) == collections.Counter(names)
    assert {r["status"] for r in rows} == {"ok"}
    for node in ("w1", "w2"):  # each worker node fetched the weights from S3 into its own cache
        assert list((caches / node / "weights").glob("*-tiny.pt")), f"no weights fetched on {node}"
