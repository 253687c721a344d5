"""Overlapping runs of one config coordinate through the run lease (``jobs/lease.py``), with the real CLI:

* the scheduled-run recipe (README / docs/job.md), fired twice at the same moment: one run labels, the other
  exits 75 naming the live run (``--if-running skip``, the recipe's) or waits and finds nothing new (``wait``);
  every image once;
* a second run started after the first committed a part, with new inputs added: ``skip`` exits 75 and the next
  run labels only the new inputs; ``wait`` waits for the live run to commit, then labels only the new inputs;
* a SIGKILLed driver's lease is live until its TTL passes (a second run skips, never takes it over), then the
  next run resumes the crashed run.
"""
from __future__ import annotations

import collections
import logging
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import List

import numpy as np
import pytest
from PIL import Image

from jobs import commit, lease
from jobs.label import main
from tests.job_fixtures import committed_rows, run_cli

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE_MARK = "<!-- scheduled-run-recipe -->"


def recipe_job_command() -> List[str]:
    """The job command of the scheduled-run recipe: the README's when it has one, else docs/job.md's (the two
    must be the same text). The crontab line is joined, its ``\\%`` unescaped, and what follows the
    ``ray job submit ... --`` separator is returned as argv."""
    blocks = []
    for doc in (ROOT / "README.md", ROOT / "docs" / "job.md"):
        text = doc.read_text()
        if RECIPE_MARK in text:
            blocks.append(re.search(r"```bash\n(.*?)```", text.split(RECIPE_MARK, 1)[1], re.S).group(1))
    assert blocks, f"no {RECIPE_MARK} block in README.md or docs/job.md"
    assert all(b == blocks[0] for b in blocks), "README.md and docs/job.md show different recipes"
    line = " ".join(ln.rstrip("\\").strip() for ln in blocks[0].splitlines() if not ln.startswith("#"))
    assert "ray job submit" in line and " -- " in line
    return shlex.split(line.split(" -- ", 1)[1].replace("\\%", "%"))


def _local_recipe(model_args: List[str], src: pathlib.Path, out: pathlib.Path) -> List[str]:
    """The recipe's command on this machine: local input/output, the tiny model, CPU actors; every other option
    as the recipe has it (``--if-running`` included)."""
    argv = recipe_job_command()
    assert argv[:3] == ["python", "-m", "jobs.label"] and "--run-id" not in argv
    subst = {"--input": str(src), "--output": str(out), "--num-actors": "1", "--gpus-per-actor": "0"}
    for flag, value in subst.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    if "--weights" in argv:  # the tiny model's weights come with model_args
        i = argv.index("--weights")
        del argv[i:i + 2]
    tiny = list(model_args)
    tiny[tiny.index("--shard-size") + 1] = "2"
    return [sys.executable, *argv[1:], *tiny]


def _images(d: pathlib.Path, n: int, start: int = 0) -> None:
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(d / f"img{i:03d}.png")


def _spawn(argv: List[str], log: pathlib.Path) -> subprocess.Popen:
    """A driver connected to the session's Ray (as ``ray job submit`` drivers share the cluster's head)."""
    import ray

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    f = open(log, "wb")
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started (a driver; Ray reaps its workers)
    except ProcessLookupError:
        pass


def _assert_each_once(out: pathlib.Path, src: pathlib.Path) -> List[dict]:
    rows = committed_rows(str(out))
    assert collections.Counter(r["source_uri"] for r in rows) == collections.Counter(str(p) for p in src.iterdir())
    return rows


def _attempt_images(log: str) -> int:
    """Images an attempt labeled, from the summary the CLI printed (``this attempt: N images``)."""
    return int(re.search(r"this attempt: (\d+) images", log).group(1))


@pytest.mark.parametrize("mode", ["skip", "wait"])
def test_recipe_fired_twice_at_once_labels_each_image_once(mode, ray_local, model_args, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 16)
    argv = _local_recipe(model_args, src, out)
    assert argv[argv.index("--if-running") + 1] == "skip"  # the recipe's choice, the default
    argv[argv.index("--if-running") + 1] = mode
    procs = [_spawn(argv, tmp_path / f"driver{i}.log") for i in range(2)]  # 0 s apart
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            _kill_group(p)
    logs = [(tmp_path / f"driver{i}.log").read_text() for i in range(2)]
    winner = next(i for i in range(2) if "planned 16 of 16 inputs" in logs[i])
    loser = logs[1 - winner]
    runs = commit.list_runs(str(out))
    assert len(runs) == 1 and runs[0]["committed"]  # one run: the loser planned nothing
    assert "resuming unfinished run" not in loser and "planned 16" not in loser
    if mode == "skip":
        assert codes[winner] == 0 and codes[1 - winner] == lease.EXIT_SKIPPED, logs
        skipped = [ln for ln in loser.splitlines() if ln.startswith("skipped: ")]
        assert len(skipped) == 1 and "is in progress" in skipped[0] and "exits 75" in skipped[0]
        assert re.search(r"skipped: (run \S+|a run still planning) ", skipped[0])
        assert "planned " not in loser  # it stopped before listing anything
    else:  # the loser waits for the winner to commit, then finds nothing new
        assert codes == [0, 0], logs
        assert "--if-running wait" in loser and "waiting for " in loser
        assert "nothing to label" in loser
    _assert_each_once(out, src)
    assert _attempt_images(logs[winner]) == 16  # images labeled over all attempts: each once


@pytest.mark.parametrize("mode", ["skip", "wait"])
def test_run_started_while_one_labels_never_takes_it_over(mode, ray_local, model_args, tmp_path, caplog):
    """The hourly case: run 1 labels, new images arrive, run 2 starts. skip: exit 75, and the next run labels
    only the new images; wait: run 2 waits for run 1 to commit, then labels only the new images."""
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 16)
    argv = _local_recipe(model_args, src, out)
    first = _spawn(argv, tmp_path / "first.log")
    try:
        deadline = time.time() + 300
        while not list(out.glob("runs/*/part-*.parquet")):  # the first run is labeling
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the first run committed no part in time"
            time.sleep(0.1)
        live = lease.current(str(out), next(iter(commit.list_runs(str(out))))["job_hash"])[1]
        assert lease.is_live(live) and live["run_id"]
        _images(src, 6, start=100)  # new inputs arrive while it labels
        second = argv[3:]  # the same command, in this process (the session's Ray) while the first still runs
        second[second.index("--if-running") + 1] = mode
        with caplog.at_level(logging.WARNING, logger="reslabel.lease"):
            if mode == "skip":
                assert main(second) == lease.EXIT_SKIPPED
                assert first.poll() is None, "the first run ended before the second was refused"
                assert len(commit.list_runs(str(out))) == 1  # the second run registered nothing
            else:
                summary = run_cli(second)
        assert first.wait(timeout=300) == 0
    finally:
        _kill_group(first)
    if mode == "skip":
        summary = run_cli(second)  # the next slot, after the live run committed
    else:
        assert f"waiting for run {live['run_id']}" in caplog.text
    assert summary["run_id"] != live["run_id"] and summary["attempt"]["images_labeled"] == 6
    assert summary["attempt"]["shards_resumed"] == 0
    _assert_each_once(out, src)
    assert _attempt_images((tmp_path / "first.log").read_text()) == 16  # over all attempts: 16 + 6, each once


def test_sigkilled_drivers_lease_expires_then_its_run_is_resumed(ray_local, model_args, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 20)
    argv = _local_recipe(model_args, src, out) + ["--lease-ttl", "10"]
    proc = _spawn(argv, tmp_path / "killed.log")
    try:
        deadline = time.time() + 300
        while len(list(out.glob("runs/*/part-*.parquet"))) < 2:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no parts committed in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # the driver dies mid-run; its lease is not released
        proc.wait(timeout=30)
    finally:
        _kill_group(proc)
    (crashed,) = commit.list_runs(str(out))
    assert not crashed["committed"]
    epoch, body = lease.current(str(out), crashed["job_hash"])
    assert body["run_id"] == crashed["run_id"] and not body["released"]

    args = argv[3:]  # the same command in this process: the session's Ray
    if lease.is_live(body):  # still live: a second run skips and does not take the crashed run over
        assert main(args) == lease.EXIT_SKIPPED
        assert lease.current(str(out), crashed["job_hash"])[0] == epoch
    time.sleep(max(0.0, float(body["expires_at"]) - time.time()) + 0.5)
    done_before = len(commit.committed_shards(crashed["uri"]))
    summary = run_cli(args)  # expired: this run resumes the crashed one
    assert summary["run_id"] == crashed["run_id"] and summary["attempt"]["shards_resumed"] >= done_before
    assert summary["attempt"]["images_labeled"] == 20 - 2 * summary["attempt"]["shards_resumed"]
    assert lease.current(str(out), crashed["job_hash"])[0] == epoch + 1  # taken over by the next epoch
    _assert_each_once(out, src)
