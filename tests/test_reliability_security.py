"""Reliability (issue 6, part 4): hostile inputs. Malicious pickled weights are refused by the job and the
payload never runs (the loader itself is covered by ``tests/test_models.py::
test_malicious_pickle_is_refused_and_never_runs`` and ``::test_torchscript_code_is_never_run``); config
files are data, never code; ids and run ids holding ``../`` or absolute paths cannot make any writer
(the job's run layout, the PNG/COCO exports) write outside its prefix. The S3 secret check lives in
``test_reliability_s3.py`` (objects, Parquet, ``_SUCCESS.json``, captured output and Ray's log files)."""
from __future__ import annotations

import csv
import json
import os
import pathlib
import uuid

import pytest
import torch

from jobs.label import main
from tests.crash_helpers import write_images
from tests.job_fixtures import committed_rows, run_cli

pytestmark = pytest.mark.slow


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['RESLABEL_PWNED']}",))


def _swap(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def test_job_refuses_malicious_weights(ray_local, model_args, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RESLABEL_PWNED", str(marker))
    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(1), "x": _Payload()}, evil)
    write_images(tmp_path / "in", 2)
    with pytest.raises(Exception, match="refused"):
        run_cli(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 *_swap(model_args, "--weights", str(evil))])
    assert not marker.exists()
    assert not list((tmp_path / "out").glob("runs/*"))  # no run left registered (it was withdrawn)
    # the CLI turns the refusal into a clear error and exit code 2, not a traceback
    code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 *_swap(model_args, "--weights", str(evil))])
    assert code == 2 and "evil.pt: refused" in capsys.readouterr().err
    assert not marker.exists()


def test_config_files_are_data_not_code(model_args, tmp_path, capsys):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    arch = tmp_path / "evil-arch.json"
    arch.write_text(json.dumps({"embed_dim": code, "vision_cfg": {"__reduce__": code}, "text_cfg": code}))
    templates = tmp_path / "evil-templates.txt"
    templates.write_text("a photo of {0.__class__.__init__.__globals__}.\n")
    vocab = tmp_path / "evil-vocab.txt"
    vocab.write_text(f"{code}\ncat\n")
    write_images(tmp_path / "in", 1)
    base = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main(base + _swap(model_args, "--templates", str(templates))) == 2
    assert "template" in capsys.readouterr().err
    with pytest.raises(Exception):  # a JSON config of the wrong shape fails while parsing the config
        from pipeline.config import ModelConfig
        from pipeline.model.clip import build_model

        build_model(ModelConfig(arch=str(arch), weights=model_args[model_args.index("--weights") + 1]))
    from pipeline.model.vocabulary import Vocabulary

    v = Vocabulary.load(str(vocab), str(pathlib.Path(model_args[model_args.index("--templates") + 1])))
    assert v.class_names[0] == code  # a class name is text, never evaluated
    assert not marker.exists()


HOSTILE_IDS = ["../../escaped-up", "/tmp/reslabel-abs-escape-{u}", "a/../../../escaped-mid", "..", ".",
               "s3://other-bucket/escaped", "..\\..\\escaped-win", "ok-id"]


def test_hostile_ids_and_run_ids_stay_under_prefix(ray_local, model_args, tmp_path, capsys):
    box = tmp_path / "box"
    u = uuid.uuid4().hex[:8]
    ids = [i.format(u=u) for i in HOSTILE_IDS]
    names = write_images(box / "in", len(ids))
    with open(box / "in" / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "uri"])
        w.writerows(zip(ids, names))
    before = set(os.listdir(tmp_path))
    out = box / "out"
    for bad in ("../evil-run", "/tmp/evil-run", "..", "a/../../b"):
        assert main(["--input", str(box / "in" / "manifest.csv"), "--output", str(out), *model_args,
                     "--run-id", bad]) == 2, bad
    summary = run_cli(["--input", str(box / "in" / "manifest.csv"), "--output", str(out), *model_args])
    rows = committed_rows(str(out))
    assert sorted(r["image_id"] for r in rows) == sorted(ids) and summary["by_status"] == {"ok": len(ids)}

    from jobs.export import main as export_main

    run = out / "runs" / summary["run_id"]
    for name_by in ("image_id", "source_stem"):
        assert export_main([str(run), "--png", str(box / f"png-{name_by}"), "--name-by", name_by]) == 0
    assert export_main([str(run), "--coco", str(box / "coco.json")]) == 0
    capsys.readouterr()

    assert set(os.listdir(tmp_path)) == before  # nothing appeared beside the box
    allowed = {out, box / "in", box / "png-image_id", box / "png-source_stem", box / "coco.json"}
    for p in box.rglob("*"):
        assert any(p == a or a in p.parents for a in allowed), p
        assert "escaped" not in p.name or p.parent.name.startswith("png-"), p
    pngs = list((box / "png-image_id").glob("*.png"))
    assert len(pngs) == len(ids)
    assert not pathlib.Path(f"/tmp/reslabel-abs-escape-{u}").exists()
