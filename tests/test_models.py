"""Weights loading through every supported format, refusal of unsafe or mismatched files, and the
open_clip attributes the dense forward reads (pinned on the installed version)."""
from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import zipfile

import pytest
import torch

from pipeline.config import ConfigError, ModelConfig
from pipeline.model.clip import (
    ATTN_ATTRS,
    BLOCK_ATTRS,
    VISION_ATTRS,
    WeightsError,
    build_model,
    load_state_dict,
    resolve_arch,
    vision_parts,
    weights_identity,
)
from tests.conftest import make_openclip_model


def test_open_clip_attributes_are_pinned(tiny_arch):
    model = make_openclip_model(tiny_arch)
    v = model.visual
    for a in VISION_ATTRS:
        assert hasattr(v, a), a
    for blk in v.transformer.resblocks:
        for a in BLOCK_ATTRS:
            assert hasattr(blk, a), a
        for a in ATTN_ATTRS:
            assert hasattr(blk.attn, a), a
        assert blk.attn.batch_first
    parts = vision_parts(model)
    assert len(parts.blocks) == 12 and parts.grid_size == (14, 14) and parts.patch_size == (16, 16)


def _visual_out(model, x):
    with torch.no_grad():
        return model.visual(x)


@pytest.fixture(scope="module")
def reference(tiny_arch):
    return make_openclip_model(tiny_arch, seed=3)


class _OpenAIArchive(torch.nn.Module):
    """Module with OpenAI CLIP's parameter names, to write a TorchScript archive like OpenAI's."""

    def __init__(self, clip):
        super().__init__()
        for name, child in clip.named_children():
            setattr(self, name, child)
        for name, p in clip.named_parameters(recurse=False):
            setattr(self, name, p)

    def forward(self, x):
        return self.visual.conv1(x)


def _write(fmt: str, model, path):
    sd = model.state_dict()
    if fmt == "openai_state_dict":
        torch.save(sd, path)
    elif fmt == "torchscript":
        traced = torch.jit.trace(_OpenAIArchive(model).eval(), torch.randn(1, 3, 224, 224))
        torch.jit.save(traced, path)
    elif fmt == "open_clip_checkpoint":
        torch.save({"epoch": 3, "name": "x", "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


@pytest.mark.parametrize("fmt,suffix", [("openai_state_dict", ".pt"), ("torchscript", ".pt"),
                                        ("open_clip_checkpoint", ".pt"), ("safetensors", ".safetensors")])
def test_weights_round_trip(fmt, suffix, tiny_arch, reference, tmp_path):
    path = tmp_path / f"w{suffix}"
    _write(fmt, reference, path)
    model, digest = build_model(ModelConfig(arch=tiny_arch, weights=str(path), device="cpu"))
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(_visual_out(model, x), _visual_out(reference, x), rtol=0, atol=0)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert weights_identity(ModelConfig(arch=tiny_arch, weights=str(path))) == digest  # the job plans with this
    acts = {type(b.mlp.gelu).__name__ for b in model.visual.transformer.resblocks}
    assert acts == {"QuickGELU"}


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['RESLABEL_PWNED']}",))


def test_malicious_pickle_is_refused_and_never_runs(tiny_arch, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RESLABEL_PWNED", str(marker))
    bad = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(1), "x": _Payload()}, bad)
    with pytest.raises(WeightsError, match="evil.pt.*refused"):
        build_model(ModelConfig(arch=tiny_arch, weights=str(bad)))
    legacy = tmp_path / "evil_legacy.pkl"
    legacy.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(WeightsError, match="refused"):
        load_state_dict(str(legacy))
    assert not marker.exists()


def test_mismatch_names_file_and_first_key(tiny_arch, reference, tmp_path):
    sd = reference.state_dict()
    sd["visual.proj"] = torch.zeros(3, 3)
    path = tmp_path / "shape.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"shape.pt.*'visual.proj'.*\(3, 3\)"):
        build_model(ModelConfig(arch=tiny_arch, weights=str(path)))
    del sd["visual.proj"]
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"shape.pt: missing key 'visual.proj'"):
        build_model(ModelConfig(arch=tiny_arch, weights=str(path)))


def test_weights_identity_without_building(tiny_arch, tiny_weights, tmp_path, moto_endpoint):
    """The digest the job's driver plans with equals build_model's, for every kind of weights source, and a
    remote object is hashed as it streams (no local copy) and re-hashed when it is replaced."""
    from jobs import storage
    from tests.job_fixtures import s3_client

    for mc in (ModelConfig(arch=tiny_arch, random_init=True, seed=3),
               ModelConfig(arch=tiny_arch, weights=tiny_weights)):
        assert weights_identity(mc) == build_model(mc)[1]
    storage.apply_endpoint(moto_endpoint)
    c = s3_client(moto_endpoint)
    c.create_bucket(Bucket="rl-identity")
    data = pathlib.Path(tiny_weights).read_bytes()
    c.put_object(Bucket="rl-identity", Key="w.pt", Body=data)
    remote = ModelConfig(arch=tiny_arch, weights="s3://rl-identity/w.pt")
    assert weights_identity(remote) == build_model(remote)[1] == "sha256:" + hashlib.sha256(data).hexdigest()
    c.put_object(Bucket="rl-identity", Key="w.pt", Body=data + b"x")  # replaced: a new ETag, a new digest
    assert weights_identity(remote) == "sha256:" + hashlib.sha256(data + b"x").hexdigest()


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ConfigError, match="ViT-B-16"):
        resolve_arch("ViT-Nope-99")


def test_missing_weights_file_and_bad_zip(tiny_arch, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build_model(ModelConfig(arch=tiny_arch, weights=str(tmp_path / "absent.pt")))
    junk = tmp_path / "junk.pt"
    with zipfile.ZipFile(junk, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(WeightsError, match="junk.pt"):
        build_model(ModelConfig(arch=tiny_arch, weights=str(junk)))


def test_model_config_needs_one_source():
    with pytest.raises(ConfigError, match="exactly one weight source"):
        ModelConfig(pretrained="openai", weights="x.pt").validate()
    with pytest.raises(ConfigError, match="exactly one weight source"):
        ModelConfig().validate()
    with pytest.raises(ConfigError, match="dtype"):
        ModelConfig(random_init=True, dtype="fp8").validate()


def test_torchscript_code_is_never_run(tiny_arch, tmp_path, monkeypatch):
    """A TorchScript-looking archive whose pickle calls os.system is refused without running it."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RESLABEL_PWNED", str(marker))
    bad = tmp_path / "evil_ts.pt"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("evil_ts/data.pkl", pickle.dumps(_Payload(), protocol=2))
        z.writestr("evil_ts/code/__torch__.py", "")
        z.writestr("evil_ts/constants.pkl", pickle.dumps(()))
    with pytest.raises(WeightsError, match="evil_ts.pt: refused .*posix.system|evil_ts.pt: refused .*os.system"):
        build_model(ModelConfig(arch=tiny_arch, weights=str(bad)))
    assert not marker.exists()


@pytest.fixture(scope="module")
def linear_archive(tmp_path_factory) -> bytes:
    """Bytes of a real TorchScript archive of nn.Linear(2, 3): <dir>/data.pkl, data/0 (weight), data/1 (bias)."""
    import warnings

    path = tmp_path_factory.mktemp("ts") / "linear.pt"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, OpenAI's archives are not
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 3), torch.zeros(1, 2)), str(path))
    return path.read_bytes()


def _rewrite_archive(src: bytes, path, drop=(), replace=None):
    """Copy the archive ``src`` to ``path`` without the members ``drop`` and with ``replace`` (name → bytes);
    names are relative to the archive's top folder."""
    import io

    replace = replace or {}
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            name = info.filename.split("/", 1)[1]
            if name not in drop:
                zout.writestr(info, replace.get(name, zin.read(info)))
    return str(path)


def test_torchscript_archive_reads(linear_archive, tmp_path):
    sd = load_state_dict(_rewrite_archive(linear_archive, tmp_path / "ok.pt"))
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"weight": (3, 2), "bias": (3,)}


@pytest.mark.parametrize("name,drop,replace,message", [
    ("no-pkl.pt", ("data.pkl",), None, r"no-pkl.pt: TorchScript archive has no <dir>/data.pkl"),
    ("no-storage.pt", ("data/0",), None, r"no-storage.pt: TorchScript archive lacks \w+/data/0, which \w+/data.pkl"),
    ("short-storage.pt", (), {"data/0": b"\x00" * 4},
     r"short-storage.pt: a tensor of size \[3, 2\] \(stride \[2, 1\], offset 0\) needs 6 elements, "
     r"its storage holds 1"),
    ("ragged-storage.pt", (), {"data/0": b"\x00" * 5},
     r"ragged-storage.pt: \w+/data/0 holds 5 bytes, not a whole number of torch.float32 elements"),
    ("bad-pickle.pt", (), {"data.pkl": b"\x80\x02}q\x00(X"}, r"bad-pickle.pt: unreadable TorchScript archive"),
])
def test_malformed_torchscript_is_weights_error(linear_archive, tmp_path, name, drop, replace, message):
    path = _rewrite_archive(linear_archive, tmp_path / name, drop, replace)
    with pytest.raises(WeightsError, match=message):
        load_state_dict(path)


def test_corrupt_or_truncated_zip_is_weights_error(linear_archive, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(linear_archive[: len(linear_archive) // 2])
    with pytest.raises(WeightsError, match="truncated.pt: refused — not a safetensors file"):
        load_state_dict(str(truncated))
    directory = linear_archive.index(b"PK\x01\x02")  # first central directory record
    bad_directory = tmp_path / "bad-directory.pt"
    bad_directory.write_bytes(linear_archive[:directory] + b"XX" + linear_archive[directory + 2:])
    with pytest.raises(WeightsError, match="bad-directory.pt: corrupt zip archive"):
        load_state_dict(str(bad_directory))
    pickle_at = linear_archive.index(b"\x80\x02")  # data.pkl is stored uncompressed: flip a byte of it
    bad_crc = tmp_path / "bad-crc.pt"
    bad_crc.write_bytes(linear_archive[:pickle_at + 5] + bytes([linear_archive[pickle_at + 5] ^ 0xFF])
                        + linear_archive[pickle_at + 6:])
    with pytest.raises(WeightsError, match=r"bad-crc.pt: unreadable TorchScript archive \(BadZipFile: Bad CRC-32"):
        load_state_dict(str(bad_crc))
