"""One set of CLI options (jobs/options.py): the same model, weights and segmenter flags on every command, the
old spellings as deprecated aliases, ``--set KEY=VALUE`` on the labeling job (validated, part of the hashes),
and ``DenseParams`` built from the config by name."""
from __future__ import annotations

import dataclasses

import pytest

from jobs import evaluate, label, overlay
from jobs.options import DEPRECATED
from pipeline import ModelConfig, get_preset
from pipeline.config import ConfigError

SHARED = {"--model", "--pretrained", "--weights", "--random-weights", "--dtype", "--device", "--preset", "--method",
          "--base", "--vocabulary", "--templates", "--set"}
PARSERS = {"label": label.build_parser, "evaluate": evaluate.build_parser, "overlay": overlay.build_parser}


def _options(parser):
    return {s: a for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_command_has_the_shared_options_with_the_same_meaning(command):
    opts = _options(PARSERS[command]())
    assert SHARED <= set(opts), SHARED - set(opts)
    reference = _options(label.build_parser())
    for flag in SHARED - {"--preset"}:  # --preset is required only by the job; evaluate defaults to the benchmark's
        a, b = opts[flag], reference[flag]
        assert (a.dest, a.default, a.choices, a.nargs) == (b.dest, b.default, b.choices, b.nargs), flag
    for old, new in DEPRECATED.items():
        if old in opts:
            assert opts[old].dest == opts[new].dest


def _job_args(*extra):
    return ["--input", "in", "--output", "out", "--preset", "voc21", "--random-weights", *extra]


def test_deprecated_spellings_still_work_and_say_so(capsys):
    cfg = label.config_from_args(_job_args("--batch-size", "3", "--read-batch-size", "5", "--arch", "ViT-B-32"))
    assert (cfg.images_per_call, cfg.read_threads, cfg.model) == (3, 5, "ViT-B-32")
    err = capsys.readouterr().err
    assert "--batch-size is deprecated; use --images-per-call" in err and "--arch is deprecated; use --model" in err
    args = evaluate.parse_args(["--benchmark", "voc21", "--data-root", "d", "--arch", "tiny", "--random-init"])
    assert (args.model, args.random_weights) == ("tiny", True)
    assert "--random-init is deprecated; use --random-weights" in capsys.readouterr().err
    args = overlay.parse_args(["--image", "x.jpg", "--out", "o.png", "--random-init"])
    assert args.random_weights and options_model(args).random_init


def options_model(args) -> ModelConfig:
    from jobs.options import model_config

    return model_config(args)


def test_set_on_the_labeling_job_changes_the_segmenter_config_and_its_hash(tmp_path):
    from pipeline.model.vocabulary import Vocabulary
    from pipeline.prepare import segmenter_hash

    base = label.config_from_args(_job_args())
    tuned = label.config_from_args(_job_args("--set", "temp_thd=0.2", "rcs_weights=[2.0,0.4]", "--set", "prob_thd=0"))
    crops = label.config_from_args(_job_args("--set", "crops_per_forward=2"))
    assert tuned.overrides == {"temp_thd": 0.2, "rcs_weights": (2.0, 0.4), "prob_thd": 0}
    s = tuned.segmenter_config()
    assert (s.temp_thd, s.rcs_weights, s.prob_thd) == (0.2, (2.0, 0.4), 0.0)
    assert crops.segmenter_config().crops_per_forward == 2 and base.overrides is None
    assert base.segmenter_config() == get_preset("voc21")
    (tmp_path / "v.txt").write_text("cat\ndog\n")
    vocab = Vocabulary.load(str(tmp_path / "v.txt"))
    mc = base.model_config()
    h = {name: segmenter_hash(c.segmenter_config(), mc, "sha256:x", vocab)
         for name, c in (("base", base), ("tuned", tuned), ("crops", crops))}
    assert h["tuned"] != h["base"] == h["crops"]  # labels change with temp_thd, not with crops per forward
    assert tuned.to_dict()["overrides"] == {"temp_thd": 0.2, "rcs_weights": (2.0, 0.4), "prob_thd": 0}


@pytest.mark.parametrize("pair,message", [
    ("temp_thd=abc", "SegmenterConfig.temp_thd='abc': expected a number"),
    ("temp_thd=1.5", "temp_thd=1.5 must be a probability"),
    ("no_such_field=1", "unknown SegmenterConfig fields ['no_such_field']; valid: area_thd"),
    ("rcs_weights=[2.0]", "SegmenterConfig.rcs_weights=(2.0,): expected 2 values"),
    ("crops_per_forward=0", "crops_per_forward=0 must be a positive integer"),
    ("temp_thd", "--set expects KEY=VALUE, got 'temp_thd'"),
])
def test_bad_set_values_are_refused_before_any_work(pair, message, capsys):
    with pytest.raises(ConfigError) as e:
        label.config_from_args(_job_args("--set", pair))
    assert message in str(e.value)
    assert label.main(_job_args("--set", pair)) == label.EXIT_ERROR
    assert f"error: {message}" in capsys.readouterr().err


def test_old_field_name_batch_size_maps_to_crops_per_forward():
    with pytest.warns(DeprecationWarning, match="'batch_size' is now 'crops_per_forward'"):
        assert get_preset("voc21", batch_size=3).crops_per_forward == 3


def test_dense_params_are_the_config_fields_of_the_same_name():
    from pipeline.method.dense import DenseParams
    from pipeline.method.variants import get_variant

    for preset, method, base in (("voc21", "resclip", "naclip"), ("context60", "none", "sclip"),
                                 ("cityscapes", "rcs", "clearclip")):
        c = get_preset(preset, method=method, base=base, gaussian_std=3.0, delete_same_entity=False)
        p = DenseParams.from_config(c)
        assert p == DenseParams(get_variant(method, base), c.gaussian_std, tuple(c.rcs_layers), tuple(c.rcs_weights),
                                tuple(c.sfr_weights), c.temp_thd, c.delete_same_entity, c.logit_scale)
        shared = {f.name for f in dataclasses.fields(DenseParams)} & {f.name for f in dataclasses.fields(c)}
        assert shared == {"gaussian_std", "rcs_layers", "rcs_weights", "sfr_weights", "temp_thd",
                          "delete_same_entity", "logit_scale"}  # a renamed field would silently keep its default


def test_public_api_names_are_the_objects_not_submodules():
    """``from pipeline import X`` gives the documented object even after every submodule was imported (a name
    equal to a submodule's would silently become the module)."""
    import importlib
    import types

    import pipeline

    for m in ("pipeline.segmenter", "pipeline.prepare", "pipeline.labels.reader", "pipeline.method.presets"):
        importlib.import_module(m)
    for name in pipeline.__all__:
        assert not isinstance(getattr(pipeline, name), types.ModuleType), name
