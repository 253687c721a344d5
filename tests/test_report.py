"""The QA report (``python -m jobs.report``): a real labeling run (tiny model, local Ray) → index.html whose
every referenced file exists and whose numbers equal the run's own stats; uncommitted runs refused."""
from __future__ import annotations

import html.parser
import json
import pathlib

import numpy as np
import pytest

from jobs import report
from pipeline.labels.reader import open_run
from tests.consumer_fixtures import synthetic_run
from tests.job_fixtures import committed_rows, run_cli


class Page(html.parser.HTMLParser):
    """The page's image sources and its tables (class → rows of cell texts)."""

    def __init__(self):
        super().__init__()
        self.sources, self.tables, self._table, self._row, self._cell = [], {}, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.sources.append(a["src"])
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("class"), [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self._table.append(self._row)
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _parse(out: pathlib.Path) -> Page:
    page = Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    return page


@pytest.mark.slow
def test_report_of_a_real_run_matches_its_stats(ray_local, image_dir, model_args, tmp_path, capsys):
    summary = run_cli(["--input", str(image_dir), "--output", str(tmp_path / "labels"), *model_args])
    run_dir = tmp_path / "labels" / "runs" / summary["run_id"]
    out = tmp_path / "qa"
    assert report.main([str(run_dir), "--out", str(out), "--n", "3", "--seed", "1"]) == 0
    page = _parse(out)
    assert page.sources, "no pictures"
    for src in page.sources:  # every picture the page references is beside it, and is a PNG
        assert (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert {"img/pixel_share.png", "img/scores.png"} <= set(page.sources)
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "Least confident (3)" in text and "Random sample (3, seed 1)" in text

    success = json.loads((run_dir / "_SUCCESS.json").read_text())
    status = {r[0]: int(r[1]) for r in page.tables["status"][1:]}
    assert status == success["by_status"]
    rows = committed_rows(str(tmp_path / "labels"))
    failed = [r for r in rows if r["status"] != "ok"]
    errors = page.tables["errors"][1:]
    assert sorted((e[0], e[2], e[3]) for e in errors) == sorted((r["image_id"], r["status"], r["error"])
                                                                for r in failed)
    stages = {r[0]: float(r[1]) for r in page.tables["stages"][1:]}
    assert stages == {k: round(v, 3) for k, v in success["stage_seconds_summed"].items()}
    summary_table = dict(page.tables["summary"][1:])
    assert summary_table["run"] == summary["run_id"] and int(summary_table["rows"]) == success["rows"]
    assert summary_table["job_hash"] == success["job_hash"]
    assert summary_table["segmenter_hash"] == success["segmenter_hash"]
    # per-class pixels and segment counts equal the stored segments
    names = open_run(str(run_dir)).categories
    pixels, segments = np.zeros(len(names), np.int64), np.zeros(len(names), np.int64)
    for r in rows:
        for s in r["segments"]:
            pixels[s["category_id"]] += s["area"]
            segments[s["category_id"]] += 1
    classes = {int(r[0]): r for r in page.tables["classes"][1:]}
    assert set(classes) == {i for i in range(len(names)) if pixels[i] or segments[i]}
    for i, (_, name, px, share, n, *_) in classes.items():
        assert (name, int(px), int(n)) == (names[i], pixels[i], segments[i])
        assert float(share) == pytest.approx(100 * pixels[i] / pixels.sum(), abs=0.005)
    table_shares = [float(r[3]) for r in page.tables["classes"][1:]]
    assert table_shares == sorted(table_shares, reverse=True)  # the table follows the chart: largest first
    # the least confident images come first, by the row's confidence (schema 2.2), which every ok row has
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["confidence"] is not None and 0 <= r["confidence"] <= 1 for r in ok)
    numbers = report.build(open_run(str(run_dir)), str(tmp_path / "qa2"), n=len(rows), seed=1)
    conf = {r["image_id"]: r["confidence"] for r in ok}
    assert [conf[i] for i in numbers["lowest"]] == sorted(conf.values())
    assert "wrote" in capsys.readouterr().out


def test_report_refuses_an_uncommitted_run_unless_asked(tmp_path, capsys):
    run_dir = synthetic_run(tmp_path)[0]
    (pathlib.Path(run_dir) / "_SUCCESS.json").unlink()
    assert report.main([run_dir, "--out", str(tmp_path / "qa")]) == 2
    assert "not committed" in capsys.readouterr().err and not (tmp_path / "qa").exists()
    assert report.main([run_dir, "--out", str(tmp_path / "qa"), "--allow-partial", "--n", "2"]) == 0
    page = _parse(tmp_path / "qa")
    status = {r[0]: int(r[1]) for r in page.tables["status"][1:]}
    assert status == {"ok": 5, "decode_error": 2}  # counted from the rows when there is no _SUCCESS.json
    for src in page.sources:
        assert (tmp_path / "qa" / src).is_file()


def test_report_refuses_a_relative_out_under_ray_job_submit(tmp_path, monkeypatch, capsys):
    import json as _json

    run_dir = synthetic_run(tmp_path)[0]
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", _json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}))
    monkeypatch.chdir(tmp_path)
    assert report.main([run_dir, "--out", "qa"]) == 2
    assert "relative path" in capsys.readouterr().err and not (tmp_path / "qa").exists()


def test_ignored_pixels_are_drawn_apart_from_unlabelled_ones():
    """Hatching: grey stripes over a darkened image inside the ignore region; outside it nothing changes."""
    picture = np.full((12, 12, 3), 200, np.uint8)
    ignore = np.zeros((12, 12), bool)
    ignore[:, 6:] = True
    out = report.hatch_ignored(picture, ignore)
    assert np.array_equal(out[:, :6], picture[:, :6])  # unlabelled / labelled pixels outside: as they were
    inside = out[ignore].reshape(-1, 3)
    grey = (inside == report.IGNORED_GREY).all(axis=1)
    assert 0 < grey.sum() < len(inside) and (inside[~grey] < 200).all()  # stripes + darkened, never the original


def test_empty_sections_are_left_out(tmp_path):
    """A run without failures, timings or ignore regions: no Errors, Stage timings or ignored rows, no banner."""
    run_dir = synthetic_run(tmp_path, n_ok=3, n_failed=0)[0]
    numbers = report.build(open_run(run_dir), str(tmp_path / "qa"), n=2, per_class=1)
    text = (tmp_path / "qa" / "index.html").read_text(encoding="utf-8")
    assert numbers["errors"] == 0 and not numbers["random_weights"]
    for absent in ("<h2>Errors", "<h2>Stage timings", "ignored pixels", 'id="random-weights"', "sw ign"):
        assert absent not in text, absent
    for present in ("<h2>Least confident (2)", "<h2>Least confident per class", "<h2>Random sample (2"):
        assert present in text, present
    page = _parse(tmp_path / "qa")
    assert all((tmp_path / "qa" / src).is_file() for src in page.sources)
