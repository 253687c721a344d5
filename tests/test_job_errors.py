"""Bad invocations fail with a clear message before any work: nothing is written, no run is registered."""
from __future__ import annotations

import pytest

from jobs.config import LabelJobConfig
from jobs.label import main
from pipeline.config import ConfigError
from tests.job_fixtures import s3_client


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_missing_input_prefix(model_args, tmp_path, capsys):
    code, err = _run(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"), *model_args], capsys)
    assert code == 2 and "no such file, directory or prefix" in err
    assert not (tmp_path / "out").exists()


def test_empty_input(ray_local, model_args, tmp_path, capsys):  # planning runs on Ray: the job tier
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("no images here")
    code, err = _run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *model_args], capsys)
    assert code == 2 and "no inputs found" in err


def test_unknown_preset(model_args, tmp_path, capsys):
    args = list(model_args)
    args[args.index("--preset") + 1] = "nope"
    with pytest.raises(SystemExit) as e:
        main(["--input", str(tmp_path), "--output", str(tmp_path / "out"), *args])
    assert e.value.code == 2 and "voc21" in capsys.readouterr().err


def test_unwritable_output(model_args, image_dir_small, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run(["--input", str(image_dir_small), "--output", str(blocker / "out"), *model_args], capsys)
    assert code == 2 and "not writable" in err


def test_s3_missing_prefix_and_bucket(model_args, image_dir_small, moto_endpoint, capsys):
    c = s3_client(moto_endpoint)
    c.create_bucket(Bucket="rl-errors")
    code, err = _run(["--input", "s3://rl-errors/none/", "--output", "s3://rl-errors/out", "--s3-endpoint",
                      moto_endpoint, *model_args], capsys)
    assert code == 2 and "no such file, directory or prefix" in err
    code, err = _run(["--input", str(image_dir_small), "--output", "s3://rl-no-such-bucket/out", "--s3-endpoint",
                      moto_endpoint, *model_args], capsys)
    assert code == 2 and "not writable" in err


def test_bad_vocabulary_and_weights_flags(model_args, image_dir_small, tmp_path, capsys):
    args = list(model_args)
    args[args.index("--vocabulary") + 1] = str(tmp_path / "missing.txt")
    code, err = _run(["--input", str(image_dir_small), "--output", str(tmp_path / "out"), *args], capsys)
    assert code == 2 and "missing.txt" in err and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main(["--input", "x", "--output", "y", "--pretrained", "openai", *model_args])  # with --weights


def test_overlong_run_id_fails_before_any_work(model_args, image_dir_small, tmp_path, capsys):
    """Before: a 300-character id failed only after the model loaded, leaving _text_cache/ and runs/ behind."""
    out = tmp_path / "out"
    args = ["--input", str(image_dir_small), "--output", str(out), "--run-id", "r" * 300, *model_args]
    code, err = _run(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"error: --run-id {'r' * 40!r}... (300 characters): use at most 128 characters, only "
                                "ASCII letters, digits, '-', '_' and '.', not starting with '-', '_' or '.'"]
    assert not out.exists()


@pytest.mark.parametrize("run_id", ["r" * 129, "", "-x", ".x", "_x", "a b", "a/b", "a\\b", "caf\u00e9", "a:b", "x\n"])
def test_run_id_rules(run_id):
    with pytest.raises(ConfigError, match="at most 128 characters, only ASCII letters, digits"):
        LabelJobConfig(input="x", output="y", run_id=run_id).validate()


@pytest.mark.parametrize("run_id", ["r" * 128, "run-2026.01_A", "20260101T000000Z-0a1b2c", "7"])
def test_run_id_accepted(run_id):
    assert LabelJobConfig(input="x", output="y", run_id=run_id).validate().run_id == run_id


def test_non_utf8_vocabulary_is_one_error_line(model_args, image_dir_small, tmp_path, capsys):
    bad = tmp_path / "classes::latin1.txt"
    bad.write_bytes("caf\u00e9\n".encode("latin-1"))
    args = list(model_args)
    args[args.index("--vocabulary") + 1] = str(bad)
    code, err = _run(["--input", str(image_dir_small), "--output", str(tmp_path / "out"), *args], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"error: {bad}: not UTF-8 text: byte 0xe9 at position 3"]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def image_dir_small(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(d / "a.png")
    return d
