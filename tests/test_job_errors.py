"""Bad invocations fail with a clear message before any work: nothing is written, no run is registered."""
from __future__ import annotations

import pytest

from jobs.label import main
from tests.job_fixtures import s3_client


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_missing_input_prefix(model_args, tmp_path, capsys):
    code, err = _run(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"), *model_args], capsys)
    assert code == 2 and "no such file, directory or prefix" in err
    assert not (tmp_path / "out").exists()


def test_empty_input(model_args, tmp_path, capsys):
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
