"""``jobs.dispatch.label_shards`` on a real local Ray with toy read tasks and actors (no model): every shard is
yielded exactly once; a killed actor's shards go to the others and the restarted actor works again; an actor
whose constructor fails is replaced a bounded number of times, then its error ends the run; a call's own error
ends the run; progress is logged."""
from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Dict, List

import pytest

from jobs.dispatch import Dispatch, label_shards


def read_toy(shard: int, *, rows: int) -> Dict:
    return {"shard": shard, "rows": rows}


class ToyActor:
    """``label_block`` reports its shard; ``die_on`` shards kill the actor process once each (a marker file
    under ``marks`` remembers it), after writing a "part" marker when ``die_after_write``."""

    def __init__(self, marks: str, die_on=(), die_after_write: bool = False, fail_init_times: int = 0,
                 raise_on=(), delay_s: float = 0.0):
        self.marks, self.die_on, self.after = pathlib.Path(marks), set(die_on), die_after_write
        self.delay_s = delay_s
        self.raise_on = set(raise_on)
        tries = self.marks / "init-tries"
        n = int(tries.read_text()) if tries.exists() else 0
        tries.write_text(str(n + 1))
        if n < fail_init_times:
            raise ValueError(f"constructor failure {n + 1}")
        self.pid = os.getpid()

    def ready(self) -> bool:
        return True

    def label_block(self, decoded: Dict) -> List[Dict]:
        shard = decoded["shard"]
        if shard in self.raise_on:
            raise RuntimeError(f"cannot write shard {shard}")
        mark = self.marks / f"died-{shard}"
        if shard in self.die_on and not mark.exists():
            mark.write_text(str(self.pid))
            if self.after:
                (self.marks / f"part-{shard}").touch()
            os._exit(1)
        time.sleep(self.delay_s)
        (self.marks / f"part-{shard}").touch()
        return [dict(shard=shard, rows=decoded["rows"], pid=self.pid)]


def _run(tmp_path, todo, num_actors=2, **actor_kwargs) -> List[Dict]:
    return list(label_shards(todo, read_fn=read_toy, read_kwargs=dict(rows=3), actor_cls=ToyActor,
                             actor_kwargs=dict(marks=str(tmp_path), **actor_kwargs),
                             dispatch=Dispatch(num_actors=num_actors, read_options=dict(num_cpus=0.1),
                                               actor_options=dict(num_cpus=0.5), progress_every_s=1.0)))


def test_every_shard_once_over_the_pool(ray_local, tmp_path):
    # 0.2 s a shard: the first actor up cannot finish all 20 before the second is up (a loaded machine starts
    # actors seconds apart, and a shard goes only to an actor that answered its probe)
    results = _run(tmp_path, list(range(20)), delay_s=0.2)
    assert sorted(r["shard"] for r in results) == list(range(20))
    assert sum(r["rows"] for r in results) == 60
    assert len({r["pid"] for r in results}) == 2  # both actors worked


@pytest.mark.parametrize("after_write", [False, True])
def test_a_killed_actor_loses_nothing_and_reports_nothing_twice(ray_local, tmp_path, after_write):
    results = _run(tmp_path, list(range(12)), die_on=(2, 7), die_after_write=after_write)
    assert sorted(r["shard"] for r in results) == list(range(12))  # each once, also those relabeled
    assert {int((tmp_path / f"died-{k}").read_text()) for k in (2, 7)}  # the kills happened
    assert all((tmp_path / f"part-{k}").exists() for k in range(12))


def test_one_actor_killed_is_restarted_and_works_again(ray_local, tmp_path):
    results = _run(tmp_path, list(range(6)), num_actors=1, die_on=(0,))
    assert sorted(r["shard"] for r in results) == list(range(6))
    killed = int((tmp_path / "died-0").read_text())
    assert {r["pid"] for r in results} and killed not in {r["pid"] for r in results}  # the restarted process


def test_constructor_failures_replaced_then_fatal(ray_local, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="reslabel.job"):
        results = _run(tmp_path, list(range(4)), num_actors=1, fail_init_times=2)
    assert sorted(r["shard"] for r in results) == list(range(4))
    assert "a segment actor failed to start (2 of 3 allowed)" in caplog.text
    import ray

    (tmp_path / "init-tries").unlink()
    with pytest.raises(ray.exceptions.ActorDiedError, match="constructor failure 4"):
        _run(tmp_path, list(range(4)), num_actors=1, fail_init_times=100)


def test_a_call_error_ends_the_run(ray_local, tmp_path):
    import ray

    with pytest.raises(ray.exceptions.RayTaskError, match="cannot write shard 3"):
        _run(tmp_path, list(range(6)), raise_on=(3,))


def test_ray_actor_state_accessor_pinned(ray_local, tmp_path):
    """``jobs.dispatch._restarting`` reads Ray's private local view of an actor's state (as Ray Data does); a
    Ray upgrade that renames it would make a lost node's shards wait for ever: pin it here."""
    import ray
    from ray.core.generated import gcs_pb2

    from jobs.dispatch import _restarting

    actor = ray.remote(ToyActor).options(num_cpus=0.1).remote(str(tmp_path))
    assert ray.get(actor.ready.remote())
    assert actor._get_local_state() == gcs_pb2.ActorTableData.ActorState.ALIVE
    assert gcs_pb2.ActorTableData.ActorState.RESTARTING != gcs_pb2.ActorTableData.ActorState.ALIVE
    assert _restarting(actor) is False
    ray.kill(actor)


def test_actor_states_and_the_hint_for_actors_that_cannot_start(ray_local, tmp_path):
    import time

    import ray

    from jobs.dispatch import actor_states, waiting_hint

    alive = ray.remote(ToyActor).options(num_cpus=0.1).remote(str(tmp_path))
    stuck = ray.remote(ToyActor).options(num_cpus=0.1, resources={"no_such_slot": 1}).remote(str(tmp_path))
    ray.get(alive.ready.remote())
    deadline = time.time() + 30
    while actor_states([stuck]).get("UNKNOWN") and time.time() < deadline:
        time.sleep(0.2)
    states = actor_states([alive, stuck])
    assert states.get("ALIVE") == 1 and sum(states.values()) == 2, states
    (pending,) = [k for k in states if k != "ALIVE"]
    assert pending in ("PENDING_CREATION", "DEPENDENCIES_UNREADY"), states
    hint = waiting_hint(actor_states([stuck]), {"num_cpus": 0.1, "resources": {"no_such_slot": 1}})
    assert "no segment actor has started yet" in hint and "no_such_slot" in hint and pending in hint
    ray.kill(alive), ray.kill(stuck)
