"""The run lease (``jobs/lease.py``) on the real stores: a local directory and a moto S3 server. Many drivers
(threads) racing for one lease, or for one expired lease, leave exactly one holder; a live lease is never taken
over; an expired one is; a holder whose lease was taken over finds out."""
from __future__ import annotations

import threading
import time

import pytest

from jobs import lease, storage
from schemas import layout
from tests.job_fixtures import s3_client

RACERS = 8


def _race(output: str, job_hash: str, ttl: float) -> list:
    """Start RACERS drivers at once (a barrier); return the leases that think they hold."""
    barrier = threading.Barrier(RACERS)
    won, errors = [], []

    def one() -> None:
        held = lease.Lease(output, job_hash, ttl)
        barrier.wait()
        try:
            if held.try_acquire() is None:
                won.append(held)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return won


def _output(kind: str, tmp_path, request) -> str:
    if kind == "local":
        return str(tmp_path / "out")
    endpoint = request.getfixturevalue("moto_endpoint")
    storage.apply_endpoint(endpoint)
    c = s3_client(endpoint)
    bucket = f"lease-{kind}-{int(time.time() * 1000) % 10**9}"
    c.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/labels"


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.job)])  # s3: the moto server
def test_one_holder_among_racers_and_takeover_of_an_expired_lease(kind, tmp_path, request):
    output = _output(kind, tmp_path, request)
    won = _race(output, "cfg0", ttl=2.0)
    assert len(won) == 1  # the atomic create decides, not timing
    first = won[0]
    epoch, body = lease.current(output, "cfg0")
    assert epoch == first.epoch == 1 and body["holder"] == first.holder and lease.is_live(body)

    # live: nobody takes it over, also when asked to skip
    with pytest.raises(lease.RunInProgress, match="skipped: a run still planning .* lease epoch 1"):
        lease.Lease(output, "cfg0", 2.0).acquire("skip")

    # expired (its driver "died": no heartbeat was started): all racers try to take over, exactly one wins
    time.sleep(2.2)
    won = _race(output, "cfg0", ttl=30.0)
    assert len(won) == 1 and won[0].epoch == 2
    assert lease.current(output, "cfg0")[1]["holder"] == won[0].holder
    with pytest.raises(lease.LeaseLost, match="not renewed for 2 s"):
        first.check()  # the old holder knows it missed its renewals for a TTL
    with pytest.raises(lease.LeaseLost, match="taken over"):
        first._write(run_id="zombie")  # and a late renewal finds the higher epoch instead of overwriting it
    assert lease.current(output, "cfg0")[1]["holder"] == won[0].holder

    won[0].release()
    assert not lease.is_live(lease.current(output, "cfg0")[1])
    again = lease.Lease(output, "cfg0", 30.0).acquire("skip")  # a released lease is free at once
    assert again.epoch == 3
    again.release()
    names = storage.list_dir(lease.lease_dir(output, "cfg0"))
    assert sorted(layout.lease_epoch_of(n) for n in names) == [2, 3]  # epochs below the previous one deleted


def test_heartbeat_renews_and_wait_waits_for_release(tmp_path, caplog):
    output = str(tmp_path / "out")
    holder = lease.Lease(output, "cfg1", ttl_s=2.0).acquire("skip")
    holder.update(run_id="run-a", state="labeling")
    t_end = time.time() + 3.0  # longer than the TTL: only the heartbeat keeps it live
    while time.time() < t_end:
        assert lease.is_live(lease.current(output, "cfg1")[1])
        time.sleep(0.2)
    holder.check()

    waiter = lease.Lease(output, "cfg1", ttl_s=2.0)
    got = []
    t = threading.Thread(target=lambda: got.append(waiter.acquire("wait", progress_every_s=0.5)))
    with caplog.at_level("WARNING", logger="reslabel.lease"):
        t.start()
        time.sleep(1.5)
        assert not got  # still waiting: the live run holds the lease
        holder.release()
        t.join(30)
    assert got and got[0].epoch == holder.body["epoch"] + 1
    assert "waiting for run run-a" in caplog.text and "--if-running wait" in caplog.text
    got[0].release()


def test_s3_conditional_create_is_honoured_by_moto(moto_endpoint):
    """moto 5.2.5's server answers a second ``If-None-Match: *`` PUT with 412: the S3 path is tested for real."""
    storage.apply_endpoint(moto_endpoint)
    c = s3_client(moto_endpoint)
    c.create_bucket(Bucket="lease-cond")
    uri = "s3://lease-cond/x/obj"
    assert storage.create_exclusive(uri, b"first") is True
    assert storage.create_exclusive(uri, b"second") is False
    assert c.get_object(Bucket="lease-cond", Key="x/obj")["Body"].read() == b"first"
    storage.check_conditional_create("s3://lease-cond/x")  # the probe passes and leaves nothing behind
    assert [o["Key"] for o in c.list_objects_v2(Bucket="lease-cond")["Contents"]] == ["x/obj"]
