"""The offline smoke mode (``--random-weights``): the job runs for real and says loudly that its labels
are meaningless; the rows record the random weights in their provenance."""
from __future__ import annotations

import shutil

from jobs.label import main
from tests.job_fixtures import committed_rows

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_random_weights_smoke_mode(ray_local, tiny_arch, tiny_templates_file, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(ROOT / "pipeline/data/samples" / name, images / name)
    out = tmp_path / "out"
    code = main(["--input", str(images), "--output", str(out), "--preset", "voc21", "--model", tiny_arch,
                 "--random-weights", "--vocabulary", str(ROOT / "pipeline/data/samples/vocabulary.txt"),
                 "--templates", tiny_templates_file])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.count("LABELS ARE MEANINGLESS") == 2  # before and after the run
    rows = committed_rows(str(out))
    assert sorted(r["source_uri"].rsplit("/", 1)[-1] for r in rows) == ["chelsea.jpg", "coffee.jpg"]
    assert all(r["status"] == "ok" and r["weights_digest"].startswith("random:") for r in rows)


def test_random_weights_excludes_other_sources(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--preset", "voc21",
              "--random-weights", "--weights", "w.pt"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
