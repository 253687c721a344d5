"""Which local paths are safe where (jobs/cluster.py): relative paths under `ray job submit`, local paths on a
multi-node cluster, --shared-fs; and the same refusals through the CLI (one `error:` line, exit 2, nothing
written). The real job server and the real multi-node cluster are in test_job_submit.py and
test_job_multinode.py."""
from __future__ import annotations

import json

import pytest

from jobs import cluster
from jobs.label import main
from pipeline.config import ConfigError

UNDER_JOB = cluster.Submission(True, "gcs://_ray_pkg_0123456789abcdef.zip")


def _paths(**kw):
    values = dict(input="s3://b/in/", output="s3://b/out", weights=None, text_cache=None)
    values.update(kw)
    return list(values.items())


@pytest.mark.parametrize("option", ["input", "output", "weights", "text_cache"])
def test_relative_paths_refused_under_ray_job_submit(option):
    with pytest.raises(ConfigError) as e:
        cluster.check_relative(_paths(**{option: "data/x"}), UNDER_JOB, "/tmp/ray/session/_ray_pkg_1")
    msg = str(e.value)
    assert f"--{option.replace('_', '-')} 'data/x' is a relative path" in msg
    assert "/tmp/ray/session/_ray_pkg_1" in msg and "s3://" in msg and "--shared-fs" in msg
    if option == "input":
        assert "image ids" in msg
    if option == "output":
        assert "deletes that copy" in msg


def test_absolute_remote_and_local_runs_pass_the_relative_check():
    cluster.check_relative(_paths(input="/data/in", output="file:///data/out", weights="~/w.pt"), UNDER_JOB, "/x")
    cluster.check_relative(_paths(input="s3://b/in", output="s3://b/out"), UNDER_JOB, "/x")
    cluster.check_relative(_paths(input="in", output="out"), cluster.Submission(False), "/x")  # not a job


def test_submission_read_from_rays_job_environment(monkeypatch):
    monkeypatch.delenv(cluster.JOB_ENV, raising=False)
    assert cluster.Submission.from_env() == cluster.Submission(False)
    monkeypatch.setenv(cluster.JOB_ENV, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_ab.zip"},
                                                    "metadata": {"job_submission_id": "s"}}))
    assert cluster.Submission.from_env() == cluster.Submission(True, "gcs://_ray_pkg_ab.zip")
    monkeypatch.setenv(cluster.JOB_ENV, "not json")
    assert cluster.Submission.from_env().under_job


@pytest.mark.parametrize("placement, reason", [
    (cluster.Placement(3, 2.0), "3 alive nodes"),
    (cluster.Placement(1, 0.0), "the driver's node has no CPUs"),
    (cluster.Placement(1, 2.0, client_mode=True), "Ray Client"),
])
def test_local_paths_refused_on_multi_node(placement, reason):
    values = _paths(input="/data/in", weights="/models/w.pt")
    with pytest.raises(ConfigError) as e:
        cluster.check_local(values, placement, shared_fs=False)
    msg = str(e.value)
    assert "--input /data/in" in msg and "--weights /models/w.pt" in msg and reason in msg and "--shared-fs" in msg
    cluster.check_local(values, placement, shared_fs=True)  # the user says every node mounts them


def test_single_node_and_object_store_paths_pass():
    cluster.check_local(_paths(input="/data/in", output="/data/out"), cluster.Placement(1, 2.0), shared_fs=False)
    cluster.check_local(_paths(), cluster.Placement(5, 0.0), shared_fs=False)


def test_placement_of_the_local_ray(ray_local):
    p = cluster.Placement.of_running_ray()
    assert (p.alive_nodes, p.driver_node_cpus, p.client_mode, p.multi_node) == (1, 2.0, False, False)


def test_cli_refuses_relative_output_under_a_job(model_args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(cluster.JOB_ENV, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_ab.zip"}}))
    (tmp_path / "in").mkdir()
    code = main(["--input", str(tmp_path / "in"), "--output", "out/labels", *model_args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error: ") == 1 and "Traceback" not in err
    assert "--output 'out/labels' is a relative path" in err
    assert not (tmp_path / "out").exists()
