"""Resources and the actor pool (issue 20, items 3-5), on real Ray with the real CLI:

* the budget: two 1-CPU actors on a 2-CPU Ray would leave no CPU for the read tasks: refused up front with one
  ``error:`` line (exit 2, nothing written); the elastic ``--num-actors 1-2`` finishes there with what fits;
* 4 actors asking for a custom resource the cluster has 2 of: the run finishes with 2 and warns, naming what the
  pending actors ask and what the cluster lacks;
* an autoscaling cluster (Ray's fake multi-node provider, ``tests/autoscaling_head.py``) grows the elastic pool
  from 0 worker nodes and the run finishes, every image once;
* the segment actor's constructor gets no object-store argument: no error-level "constructor arguments in the
  object store" line in a healthy run, and an actor SIGKILLed mid-run restarts and labels correctly (its text
  embeddings come from the text cache, not from a reference that could be gone).
"""
from __future__ import annotations

import collections
import glob
import json
import os
import subprocess
import sys
import time

import pytest

from tests.crash_helpers import REPO, actor_pids, committed_names, finish, kill_pids, launch, write_images
from tests.job_fixtures import assert_masks_match_inprocess, committed_rows, run_cli, sample_files

CTOR_LINE = "constructor arguments in the object store"


def test_actors_that_leave_no_cpu_for_reads_are_refused_up_front(ray_local, model_args, image_dir, tmp_path,
                                                                  capsys):
    from jobs.label import main

    out = tmp_path / "out"
    rc = main(["--input", str(image_dir), "--output", str(out), *model_args, "--num-actors", "2",
               "--cpus-per-actor", "1"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert "--num-actors 2 --cpus-per-actor 1" in lines[0] and "leave 0 for the read tasks" in lines[0], lines
    assert "nothing can add a CPU" in lines[0] and "--num-actors 1" in lines[0], lines
    assert not (out / "runs").exists()  # refused before any work


def test_an_elastic_pool_on_two_cpus_finishes_with_what_fits(ray_local, model_args, image_dir, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="reslabel.job"):
        summary = run_cli(["--input", str(image_dir), "--output", str(tmp_path / "out"), *model_args,
                           "--num-actors", "1-2", "--cpus-per-actor", "1"])
    assert summary["rows"] == len(sample_files())
    assert committed_names(str(tmp_path / "out")) == collections.Counter(sample_files().keys())
    assert "the pool grows" not in caplog.text  # a second 1-CPU actor would leave the reads no CPU


_DRIVER = """
import os, sys
import ray
ray.init(address="local", num_cpus=2, resources={"slot": 2}, include_dashboard=False)
from jobs.label import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.job  # a driver with its own Ray in a subprocess
def test_more_actors_than_the_cluster_places_finish_with_those_placed_and_warn(model_args, tmp_path):
    """4 actors asking {"slot": 1} on a Ray with 2 slots: 2 start, 2 stay pending and get no shard; the driver
    warns (what they ask, what ``ray status`` says is missing) and the run finishes with the 2."""
    names = write_images(tmp_path / "in", 64)  # labeling must outlast the 2 s warning interval (actors start early)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESLABEL_PROGRESS_S": "2"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", _DRIVER, "--input", str(tmp_path / "in"), "--output",
                           str(tmp_path / "out"), *model_args, "--shard-size", "2", "--num-actors", "4",
                           "--cpus-per-actor", "0.5", "--actor-resources", '{"slot": 1}'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert committed_names(str(tmp_path / "out")) == collections.Counter(names)
    warned = [ln for ln in log.splitlines() if "segment actor(s) have been pending" in ln]
    assert warned, log[-4000:]
    assert all("asks for {CPU: 0.5, slot: 1}" in ln for ln in warned), warned  # what each pending actor asks
    assert all("(2 wait for a node" in ln for ln in warned), warned
    assert all("{CPU: 0.5, slot: 1} x2" in ln.split("pending demands):")[1] for ln in warned), warned  # ray status
    # once both placed actors have loaded the model, the two that cannot be placed are the pending ones
    assert any("2 of 4 segment actor(s)" in ln and "while 2 work" in ln for ln in warned), warned
    assert CTOR_LINE not in log


@pytest.mark.slow
@pytest.mark.job
def test_an_autoscaling_cluster_grows_the_pool_from_zero_workers(model_args, tmp_path):
    from tests.autoscaling_head import AutoscalingHead

    names = write_images(tmp_path / "in", 24)
    head = AutoscalingHead({"CPU": 1, "labeler": 1}, max_workers=2).start()
    try:
        head.wait_for_autoscaler()
        done = head.run([sys.executable, "-m", "jobs.label", "--input", str(tmp_path / "in"), "--output",
                         str(tmp_path / "out"), *model_args, "--shard-size", "2", "--shared-fs",
                         "--num-actors", "1-2", "--cpus-per-actor", "0.5", "--actor-resources", '{"labeler": 1}'],
                        timeout=900)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-4000:] + head.monitor_log()[-3000:]
    finally:
        head.stop()
    assert committed_names(str(tmp_path / "out")) == collections.Counter(names)  # every image once
    assert "the pool grows to 2 segment actor(s) (a node the autoscaler can add)" in log, log[-4000:]
    assert CTOR_LINE not in log


@pytest.mark.job  # a driver with its own Ray in a subprocess
def test_a_restarted_actor_gets_its_text_embeddings(model_args, tmp_path):
    """One actor, SIGKILLed after it wrote its first part (its creation is long done; nothing the driver passed
    it is held for it): Ray restarts it, it reloads the text embeddings from the text cache, and every row,
    also those it labels after the restart, equals the in-process segmenter's. No constructor-args error."""
    names = write_images(tmp_path / "in", 16)
    out = tmp_path / "out"
    proc = launch(["--input", str(tmp_path / "in"), "--output", str(out), *model_args, "--shard-size", "2",
                   "--images-per-call", "2"], tmp_path / "job.log")
    parts_at_kill, killed = None, []
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not killed:
        parts = glob.glob(str(out / "runs" / "*" / "part-*.parquet"))
        pids = actor_pids(proc.pid)
        if parts and pids:
            parts_at_kill = len(parts)
            kill_pids(pids)
            killed = pids
        time.sleep(0.05)
    rc = finish(proc, timeout=600)
    log = (tmp_path / "job.log").read_text(errors="replace")
    assert rc == 0 and killed, log[-4000:]
    assert parts_at_kill < len(names) // 2, "the kill came after the last part: nothing proves the restart"
    assert "a segment actor died" in log or "a segment actor is restarting" in log, log[-4000:]
    rows = committed_rows(str(out))
    assert committed_names(str(out)) == collections.Counter(names)
    files = {n: (tmp_path / "in" / n).read_bytes() for n in names}
    assert assert_masks_match_inprocess(rows, files, model_args) == len(names)
    assert CTOR_LINE not in log
    summary = json.loads(next((out / "runs").glob("*/_SUCCESS.json")).read_text())
    assert summary["rows"] == len(names)


def test_budget_rules_on_cluster_views():
    """``jobs.resources.check_budget`` and ``room_for`` on cluster views as Ray reports them (no Ray needed)."""
    from jobs.resources import BudgetError, ClusterView, NodeType, check_budget, node_types, room_beside, room_for

    head = {"CPU": 2.0, "memory": 8e9}
    one_cpu = {"CPU": 1.0}
    fixed = ClusterView([head])
    with pytest.raises(BudgetError, match="leave 0 for the read tasks"):
        check_budget(fixed, one_cpu, 2, 2)
    assert check_budget(fixed, one_cpu, 1, 2).start == 1  # the elastic pool starts with what fits next to reads
    # actors started beside the prepare task (the reads wait for it), never around it: 1 + 1 on 2 CPUs fit; two
    # 1.5-CPU actors on 4 CPUs leave 1 for reads but not 1.5 for the task, so they start after it
    assert room_beside(fixed, one_cpu, 1)
    assert not room_beside(ClusterView([{"CPU": 4.0}]), {"CPU": 1.5}, 2)
    assert check_budget(fixed, {"CPU": 0.5}, 2, 2).read_cpus_left == 1.0
    slot = {"CPU": 0.5, "slot": 1.0}
    plan = check_budget(ClusterView([{**head, "slot": 2.0}]), slot, 4, 4)
    assert plan.start == 4 and "2 of 4 segment actor(s) cannot be placed" in plan.notes[0]
    with pytest.raises(BudgetError, match="no node offers what a segment actor asks"):
        check_budget(fixed, slot, 1, 1)
    with pytest.raises(BudgetError, match="cannot run"):
        check_budget(ClusterView([{"GPU": 1.0}]), {"GPU": 1.0}, 1, 1)
    labeler = NodeType("labeler", {"CPU": 1.0, "labeler": 1.0}, max_workers=2)
    ask = {"CPU": 0.5, "labeler": 1.0}
    scaling = ClusterView([head], autoscaler=True, node_types=[labeler])
    assert check_budget(scaling, ask, 1, 2).start == 1  # from 0 workers: one actor, the autoscaler's demand
    assert check_budget(scaling, one_cpu, 2, 2).start == 2  # the autoscaler can add CPUs for the reads
    assert room_for(scaling, ask, 1) == "autoscaler"
    full = ClusterView([head, labeler.resources, labeler.resources], autoscaler=True,
                       node_types=[NodeType("labeler", labeler.resources, 2, count=2)])
    assert room_for(full, ask, 2) == "" and room_for(ClusterView([head, labeler.resources]), ask, 0) == "now"
    unknown = ClusterView([head], autoscaler=True)  # an autoscaler whose node types are not readable
    assert check_budget(unknown, ask, 1, 1).start == 1 and check_budget(unknown, one_cpu, 2, 2).start == 2
    types = node_types({"head_node_type": "h", "available_node_types": {
        "h": {"resources": {"CPU": 2}, "max_workers": 0},
        "labeler": {"resources": {"CPU": 1, "labeler": 1}, "max_workers": 2}}},
        {"active_nodes": {"labeler": 1}, "pending_launches": {}, "pending_nodes": [["id", "labeler", "setting-up"]]})
    assert types == [NodeType("labeler", {"CPU": 1.0, "labeler": 1.0}, 2, count=2)]


def test_num_actors_spelling():
    from jobs.label import config_from_args
    from pipeline.config import ConfigError

    base = ["--input", "x", "--output", "y", "--preset", "voc21", "--random-weights"]
    assert (config_from_args(base).num_actors, config_from_args(base).max_actors) == (1, None)
    cfg = config_from_args([*base, "--num-actors", "2-4"])
    assert (cfg.num_actors, cfg.max_actors, cfg.actors_spec()) == (2, 4, "2-4")
    assert config_from_args([*base, "--num-actors", "3"]).actors_spec() == "3"
    for bad in ("0", "3-2", "a-b", "-1"):
        with pytest.raises(SystemExit):
            config_from_args([*base, "--num-actors", bad])
    from jobs.config import LabelJobConfig

    with pytest.raises(ConfigError, match="MAX must be >= MIN"):
        LabelJobConfig(input="x", output="y", num_actors=3, max_actors=2).validate()
