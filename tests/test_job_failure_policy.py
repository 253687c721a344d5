"""No silent failures: a run where nothing (or too much) failed exits 3 with its rows committed and the most
frequent errors named; errors raised inside Ray tasks and actor constructors reach the CLI as one `error:` line."""
from __future__ import annotations

import json

import pytest

from jobs.label import EXIT_FAILED_RUN, main, user_error
from jobs.runner import policy_failure
from pipeline.config import ConfigError
from pipeline.model.clip import WeightsError
from tests.crash_helpers import write_images
from tests.job_fixtures import committed_rows

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("by_status, rate, expected", [
    ({"ok": 10}, 0.5, None),
    ({"ok": 5, "decode_error": 5}, 0.5, None),  # exactly the limit is allowed
    ({"ok": 4, "decode_error": 6}, 0.5, "6 of 10 rows failed (60.0%), above --max-error-rate 0.5"),
    ({"ok": 9, "read_error": 1}, 0.0, "1 of 10 rows failed (10.0%), above --max-error-rate 0"),
    ({"decode_error": 3, "empty": 1}, 1.0, "no image was labeled: all 4 rows failed"),
])
def test_policy_failure(by_status, rate, expected):
    summary = dict(run_id="r", rows=sum(by_status.values()), by_status=by_status)
    assert policy_failure(summary, rate) == expected


def test_nothing_to_label_is_not_a_failure():
    assert policy_failure(dict(run_id=None, rows=0, job_hash="c"), 0.5) is None


def _bad_and_good(folder, n_good: int, n_bad: int):
    write_images(folder, n_good)
    for i in range(n_bad):
        (folder / f"bad-{i}.jpg").write_bytes(b"<html>404 Not Found</html>")


def test_all_bad_input_exits_3_with_rows_committed(ray_local, model_args, tmp_path, capsys):
    _bad_and_good(tmp_path / "in", 0, 3)
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *model_args])
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED_RUN
    assert "no image was labeled: all 4 rows failed" in err and "rows are committed" in err
    assert "top errors:" in out and "3 x decode_error: not a recognised image" in out and "1 x empty" in out
    assert f"output: {tmp_path / 'out'}/runs/" in out
    rows = committed_rows(str(tmp_path / "out"))
    assert sorted(r["status"] for r in rows) == ["decode_error"] * 3 + ["empty"]


def test_error_rate_threshold(ray_local, model_args, tmp_path, capsys):
    _bad_and_good(tmp_path / "in", 3, 1)
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *model_args]
    assert main([*args, "--max-error-rate", "0.2"]) == EXIT_FAILED_RUN
    assert "1 of 4 rows failed (25.0%), above --max-error-rate 0.2" in capsys.readouterr().err
    (run,) = (tmp_path / "out" / "runs").iterdir()
    summary = json.loads((run / "_SUCCESS.json").read_text())
    assert policy_failure(summary, 0.5) is None  # the default lets 1 of 4 pass
    assert main([*args, "--max-error-rate", "0.5", "--run-id", run.name]) == 0  # committed run: verdict re-read
    with pytest.raises(SystemExit):
        main([*args, "--max-error-rate", "x"])
    assert main([*args, "--max-error-rate", "1.5"]) == 2


def _fail_in_task(message: str):
    raise WeightsError(message)


class _FailingActor:
    def __init__(self, message: str):
        raise ConfigError(message)

    def ping(self) -> int:
        return 1


def test_errors_from_ray_tasks_and_actor_constructors_become_one_line(ray_local):
    with pytest.raises(Exception) as task_error:
        ray_local.get(ray_local.remote(_fail_in_task).remote("weights /w.pt: file not found"))
    assert user_error(task_error.value) == "weights /w.pt: file not found"

    actor = ray_local.remote(_FailingActor).remote("vocabulary v.txt: not UTF-8 text")
    with pytest.raises(Exception) as actor_error:
        ray_local.get(actor.ping.remote())
    assert getattr(actor_error.value, "actor_init_failed", False)  # only the remote traceback's text survives
    assert user_error(actor_error.value) == "vocabulary v.txt: not UTF-8 text"

    assert user_error(RuntimeError("a bug")) is None  # unknown errors keep their traceback
