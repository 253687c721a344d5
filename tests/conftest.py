"""Shared fixtures: a tiny random open_clip ViT written to a weights file, tiny vocabularies.

The tiny model keeps the real ViT layout (12 layers so RCS layers 6-9 exist, patch 16, 224 input,
14x14 grid) with width 64 and 2 heads, so model tests run in milliseconds. Weights go through the
real loading path: a temp file holding an OpenAI-format state dict.
"""
from __future__ import annotations

import os
import pathlib

import pytest

pytest_plugins = ["tests.job_fixtures"]  # ray_local, moto_endpoint, image_dir, model_args

TESTS = pathlib.Path(__file__).parent
TINY_ARCH = str(TESTS / "data" / "tiny-vit.json")

os.environ.setdefault("RAY_ACCEPT_CLUSTER_SIDE_EFFECTS", "1")

# Tiers (ARCHITECTURE.md, the paragraph on tests): a test that uses one of these fixtures starts Ray or an S3
# server and is marked ``job`` here, so ``pytest -m "not job and not slow"`` runs the pure-unit tier alone. New
# job-level tests are marked by using the fixtures; a test that starts Ray or a job some other way marks itself
# (pytest.mark.job).
JOB_FIXTURES = frozenset({"ray_local", "moto_endpoint"})


def _tier(item) -> int:
    """0: slow (crash scenarios, clusters, the real ViT-B/16 shape), 1: job, 2: pure unit."""
    return 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("job") else 2


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if JOB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.job)
    # Longest first: scripts/test.sh runs the suite on 2 pytest-xdist workers that each take the next test (or
    # xdist_group) in this order, so the slow and job tiers start first and the many short unit tests fill in at
    # the end instead of one long test running alone. Modules stay contiguous (their module-scoped fixtures
    # are set up once per worker); within a module, the order is the file's.
    first: dict = {}
    for i, item in enumerate(items):
        key = item.nodeid.split("::", 1)[0]
        first[key] = min(first.get(key, (3, i)), (_tier(item), i))
    items.sort(key=lambda item: first[item.nodeid.split("::", 1)[0]])


def make_openclip_model(arch: str, seed: int = 0):
    """A random-initialised open_clip CLIP (QuickGELU), fp32, eval mode."""
    import open_clip
    import torch

    from pipeline.model.clip import resolve_arch

    name = resolve_arch(arch)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True)
    # Random init leaves logit_scale etc. at defaults; perturb LayerNorms so they are not identities.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in model.named_parameters():
            if n.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif n.endswith(("ln_1.bias", "ln_2.bias", "ln_pre.bias", "ln_post.bias")):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_arch() -> str:
    """Path to the tiny open_clip architecture JSON (usable as ModelConfig.arch)."""
    return TINY_ARCH


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> str:
    """Path to an OpenAI-format state dict (torch.save of a plain dict) of the tiny model."""
    import torch

    path = tmp_path_factory.mktemp("weights") / "tiny-openai.pt"
    torch.save(make_openclip_model(TINY_ARCH).state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_vocab_file(tmp_path_factory) -> str:
    """A 4-class vocabulary with synonyms (7 queries), benchmark file format."""
    path = tmp_path_factory.mktemp("vocab") / "tiny.txt"
    path.write_text("sky, wall, tree\ncat\ndog, puppy\nperson\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_templates_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vocab") / "templates.txt"
    path.write_text("a photo of a {}.\na bad photo of the {}.\n")
    return str(path)
