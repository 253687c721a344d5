"""Reliability (issue 6, part 3): crashes. (a) The segment actor process is SIGKILLed three times during
a run: Ray restarts it and retries its batches; the run commits every image exactly once. (b) The driver
(``python -m jobs.label`` as a subprocess with its own local Ray) is SIGKILLed at seeded random moments
and the same ``--run-id`` resumed each time: the committed set equals the input set exactly.
Longer loops: ``bench/soak.py``."""
from __future__ import annotations

import collections
import random
import threading
import time

import pytest

from tests.crash_helpers import actor_pids, committed_names, finish, kill_driver_at, kill_pids, launch, write_images
from tests.job_fixtures import committed_rows, own_text_cache, run_cli

pytestmark = pytest.mark.slow
ACTOR_KILLS = 3
DRIVER_KILLS = 5


def _actor_killer(n_kills: int, done: threading.Event, killed: list, rng: random.Random) -> None:
    """Kill each new actor process once it has been alive a little while (it is then loading or working)."""
    first_seen = {}
    while not done.is_set() and len(killed) < n_kills:
        for pid in actor_pids():
            if pid in killed:
                continue
            first_seen.setdefault(pid, time.time())
            if time.time() - first_seen[pid] > rng.uniform(1.0, 3.0):
                kill_pids([pid])
                killed.append(pid)
        time.sleep(0.1)


def test_actor_sigkilled_three_times(ray_local, model_args, tmp_path):
    names = write_images(tmp_path / "in", 24, seed=1)
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_actor_killer, args=(ACTOR_KILLS, done, killed, random.Random(3)), daemon=True)
    killer.start()
    try:
        summary = run_cli(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *model_args,
                           "--images-per-call", "2"])
    finally:
        done.set()
        killer.join(timeout=30)
    assert len(killed) == ACTOR_KILLS, f"only {len(killed)} actor kills happened before the run ended"
    rows = committed_rows(str(tmp_path / "out"))
    assert committed_names(str(tmp_path / "out")) == collections.Counter(names)  # none lost, none twice
    assert summary["rows"] == len(names) and summary["by_status"] == {"ok": len(names)}
    assert len({r["image_id"] for r in rows}) == len(names)


def test_driver_sigkilled_and_resumed(model_args, tmp_path):
    names = write_images(tmp_path / "in", 48, seed=2)
    out = tmp_path / "out"
    # the text cache under the output: the first launches run the prepare task, so kills land in it too
    args = ["--input", str(tmp_path / "in"), "--output", str(out), *own_text_cache(model_args), "--shard-size", "4",
            "--run-id", "crash-run", "--if-running", "wait", "--lease-ttl", "5"]  # a killed driver's lease expires
    rng = random.Random(7)

    def parts():
        return list(out.glob("runs/crash-run/part-*.parquet"))
    kills, launches, parts_at_kill = 0, 0, []
    while kills < DRIVER_KILLS and launches < DRIVER_KILLS + 4:
        launches += 1
        n_parts = len(parts())
        if launches % 2:  # at a random moment after launch: startup, planning, early labeling
            at, when = rng.uniform(3.0, 15.0), None
        else:  # a random moment after this launch committed its first part: mid-labeling, mid-write
            at, when = rng.uniform(0.0, 3.0), (lambda n=n_parts: len(parts()) > n)
        if kill_driver_at(launch(args, tmp_path / "job.log"), at, when=when):
            kills += 1
            parts_at_kill.append(("after launch" if when is None else "after a part", round(at, 1), len(parts())))
    print(f"driver kills (trigger, seconds, parts committed at the kill): {parts_at_kill}")
    launches += 1
    rc = finish(launch(args, tmp_path / "job.log"))
    log = (tmp_path / "job.log").read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert kills == DRIVER_KILLS, f"{kills} kills in {launches} launches"
    assert (out / "runs" / "crash-run" / "_SUCCESS.json").exists()
    assert [p.name for p in (out / "runs").iterdir()] == ["crash-run"]
    assert committed_names(str(out)) == collections.Counter(names)  # committed set == input set, each once
