"""Both training readers with their defaults, feeding a tiny torch model for a few optimizer steps:
``jobs.read.read_labels(...).iter_torch_batches()`` (Ray Data) and ``LabeledImageDataset`` (torch DataLoader with
workers and a DistributedSampler)."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.labels.reader import label_map, open_run
from tests.consumer_fixtures import CLASSES, synthetic_run

SIZE = (24, 32)


def _tiny_model(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, len(CLASSES), 1))


def _train_step(model, opt, images, labels) -> float:
    """images (B, H, W, 3) uint8, labels (B, H, W) integer with 255 = ignore → one SGD step; the loss."""
    import torch

    x = images.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    loss = torch.nn.functional.cross_entropy(model(x), labels.long(), ignore_index=255)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def _params(model) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


@pytest.mark.slow
def test_read_labels_trains_with_default_torch_batches(ray_local, tmp_path, capfd):
    import torch

    from jobs.read import read_labels

    run_dir, labels, _ = synthetic_run(tmp_path, n_ok=4, n_failed=1, exclude=(0,))
    capfd.readouterr()
    ds = read_labels(run_dir, with_images=True)  # no size: rows keep their own shapes
    with pytest.raises(ValueError, match=r"size=\(H, W\)"):
        next(iter(ds.iter_torch_batches()))
    ds = read_labels(run_dir, with_images=True, size=SIZE).materialize()  # decoded once, reused each epoch
    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before, losses, seen = _params(model), [], []
    for _ in range(3):  # epochs
        for batch in ds.iter_torch_batches(batch_size=2):  # the defaults otherwise
            assert batch["image"].shape[1:] == (*SIZE, 3) and batch["label"].shape[1:] == SIZE
            assert isinstance(batch["image_id"], list) and all(isinstance(i, str) for i in batch["image_id"])
            seen += batch["image_id"]
            losses.append(_train_step(model, opt, batch["image"], batch["label"]))
    assert sorted(seen) == sorted(list(labels) * 3)
    assert all(np.isfinite(losses)) and not np.array_equal(before, _params(model))
    assert 255 in torch.cat([b["label"].flatten() for b in ds.iter_torch_batches(batch_size=4)]).tolist()
    # failed rows too (1x1 labels of 255 resized to SIZE; their null width/height arrive as NaN)
    (mixed,) = read_labels(run_dir, status=("ok", "decode_error"), size=SIZE).iter_torch_batches(batch_size=8)
    assert mixed["label"].shape == (5, *SIZE) and sorted(mixed["status"]) == ["decode_error"] + ["ok"] * 4
    assert int(torch.isnan(mixed["width"].double()).sum()) == 1 and len(mixed["width"]) == 5
    time.sleep(1.0)  # worker output reaches the driver's stderr asynchronously
    out = capfd.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and "InterruptedError" not in text, text
    assert "Starting execution" not in text and "Execution finished" not in text, text


def _small_row_groups(run_dir: str) -> None:
    """Rewrite every part with 2 rows per row group (the job writes larger ones; streaming must not care)."""
    for path in open_run(run_dir).files:
        table = pq.read_table(path)
        pq.write_table(table, path, row_group_size=2)


def test_labeled_image_dataset_trains_with_workers_and_distributed_sampler(tmp_path):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from pipeline.labels.dataset import LabeledImageDataset

    run_dir, labels, images = synthetic_run(tmp_path, n_ok=6, n_failed=2, exclude=(0,))
    _small_row_groups(run_dir)
    dset = LabeledImageDataset(run_dir, size=SIZE)  # a path is enough
    assert len(dset) == 6 and not hasattr(dset, "rows")
    assert pq.ParquetFile(open_run(run_dir).files[0]).num_row_groups > 1
    # items: writable tensors at SIZE; labels nearest (no invented classes, 255 kept), images bilinear
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. torch's "The given NumPy array is not writable"
        image, lab = dset[0]
    image_id = dset.row(0)["image_id"]
    assert image.dtype == torch.uint8 and image.shape == (*SIZE, 3) and lab.dtype == torch.int64
    assert set(lab.unique().tolist()) <= set(np.unique(labels[image_id]).tolist()) and 255 in lab.unique().tolist()
    full = LabeledImageDataset(open_run(run_dir))  # an opened run works the same; no size = own size
    for i in range(len(full)):
        im, lb = full[i]
        row = full.row(i)
        assert np.array_equal(lb.numpy(), label_map(row)) and np.array_equal(im.numpy(), images[row["image_id"]])

    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before, per_rank = _params(model), []
    for rank in range(2):
        sampler = DistributedSampler(dset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(dset, batch_size=2, sampler=sampler, num_workers=2)
        got = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            for image, lab in loader:
                assert image.shape[1:] == (*SIZE, 3) and lab.shape[1:] == SIZE and len(image) == len(lab)
                assert np.isfinite(_train_step(model, opt, image, lab))
                got.append(lab.shape[0])
        per_rank.append(sum(got))
    assert per_rank == [6, 6]  # 3 items per rank per epoch, 2 epochs
    assert not np.array_equal(before, _params(model))
    # the two ranks split the run: together every index once per epoch
    idx = [list(DistributedSampler(dset, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in range(2)]
    assert sorted(idx[0] + idx[1]) == list(range(6))


def test_labeled_image_dataset_filters_and_errors(tmp_path):
    from pipeline.labels.dataset import LabeledImageDataset

    run_dir, labels, _ = synthetic_run(tmp_path, n_ok=4, n_failed=1)
    _small_row_groups(run_dir)
    only = LabeledImageDataset(run_dir, image_ids=["img002", "bad0"])
    assert len(only) == 1 and only.row(0)["image_id"] == "img002"
    cats = LabeledImageDataset(run_dir, categories=["cat"])
    assert all(s["category_name"] == "cat" for i in range(len(cats)) for s in cats.row(i)["segments"])
    with pytest.raises(ValueError, match="size"):
        LabeledImageDataset(run_dir, size=(0, 4))
    with pytest.raises(IndexError):
        only.row(1)


@pytest.mark.parametrize("doc", ["docs/consumers.md", "README.md"])
def test_docs_torch_snippet_runs(doc, tmp_path, capsys):
    """The marked torch block (the training loop of docs/consumers.md and of the README), as written, on a real
    run."""
    import pathlib
    import re

    run_dir, labels, _ = synthetic_run(tmp_path, n_ok=5, n_failed=1, exclude=(0,))
    text = (pathlib.Path(__file__).parent.parent / doc).read_text()
    (block,) = re.findall(r"<!-- train-snippet -->\n```python\n(.*?)```", text, flags=re.S)
    exec(compile(block, doc, "exec"), {"RUN": run_dir})
    assert f"trained on {len(labels)} images, last loss" in capsys.readouterr().out
