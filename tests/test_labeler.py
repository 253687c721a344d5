"""The Ray Data labeler (``jobs.labeler``) in a user's own pipeline gives the CLI job's rows for the same images:
same image ids, statuses, errors, sizes, segments (RLE) and provenance; only ``run_id``/``labeled_at`` differ."""
from __future__ import annotations

import os
import pathlib
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.labeler import Labeler
from tests.job_fixtures import MAX_PIXELS, committed_rows, expected_status_by_name, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("labeler_rows")]  # module fixture: one worker
ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN_FIELDS = ("run_id", "labeled_at")  # name the run and the time, not the labels


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in RUN_FIELDS}


@pytest.fixture(scope="module")
def cli_rows(ray_local, image_dir, model_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-out")
    run_cli(["--input", str(image_dir), "--output", str(out), *model_args])
    return {r["image_id"]: r for r in committed_rows(str(out))}


@pytest.fixture(scope="module")
def spec(ray_local, model_args):
    from jobs.label import config_from_args
    from jobs.labeler import prepare_labeler

    return prepare_labeler(config_from_args(["--input", "unused", "--output", "unused", *model_args]))


def _snippet() -> str:
    """The Python block after ``<!-- labeler-snippet -->`` in docs/job.md."""
    text = (ROOT / "docs" / "job.md").read_text()
    return re.search(r"```python\n(.*?)```", text.split("<!-- labeler-snippet", 1)[1], re.S).group(1)


def test_user_pipeline_rows_equal_the_cli_rows(ray_local, image_dir, cli_rows, tmp_path, tiny_arch, tiny_weights,
                                               tiny_vocab_file, tiny_templates_file):
    """docs/job.md's snippet as a user runs it (read_binary_files → map_batches(Labeler, concurrency=(1, 2)) →
    write_parquet), with the tiny model and the test images (good and bad) instead of its paths."""
    from schemas import LABEL_SCHEMA

    code = _snippet()
    weights = 'weights="/models/ViT-B-16.pt"'
    assert weights in code and '"/data/images/"' in code and '"/data/labels/' in code and "(1, 2)" in code
    code = code.replace(weights, f"model={tiny_arch!r}, weights={tiny_weights!r}, vocabulary={tiny_vocab_file!r}, "
                                 f"templates={tiny_templates_file!r}, max_pixels={MAX_PIXELS}")  # as model_args
    code = code.replace('"/data/images/"', f'"{image_dir}/"').replace('"/data/labels/', f'"{tmp_path}/labels/')
    scope: dict = {}
    exec(compile(code, "docs/job.md", "exec"), scope)
    spec = scope["spec"]
    assert spec.job_hash == next(iter(cli_rows.values()))["job_hash"]  # the same options hash as the CLI's

    out = tmp_path / "labels" / spec.run_id
    table = pq.read_table(str(out))
    assert table.schema.names == LABEL_SCHEMA.names
    rows = table.to_pylist()
    assert len(rows) == len(expected_status_by_name())  # every input row → exactly one output row
    assert {r["image_id"] for r in rows} == set(cli_rows)
    for r in rows:
        assert _comparable(r) == _comparable(cli_rows[r["image_id"]]), r["source_uri"]
        assert r["run_id"] == spec.run_id
    by_name = {r["source_uri"].rsplit("/", 1)[-1]: r["status"] for r in rows}
    assert by_name == expected_status_by_name()
    assert sum(bool(r["segments"]) for r in rows) > 0  # the model labeled something: segments were compared


def test_bad_images_in_one_batch_and_decoded_arrays(ray_local, image_dir, spec, cli_rows):
    """One batch holding good and bad inputs, called in-process: bytes rows and ``read_images``-style arrays."""
    from jobs.inputs import stable_id
    from pipeline.io.decode import decode_image

    labeler = Labeler(spec)
    names = ["truncated.jpg", "astronaut.jpg", "empty.png", "notimage.jpg", "chelsea.png"]
    paths = [str(image_dir / n) for n in names]
    batch = {"bytes": np.array([(image_dir / n).read_bytes() for n in names], dtype=object),
             "path": np.array(paths, dtype=object)}
    got = labeler(batch).to_pylist()
    assert [r["image_id"] for r in got] == [stable_id(p) for p in paths]
    for r in got:
        assert _comparable(r) == _comparable(cli_rows[r["image_id"]])
    assert [r["status"] for r in got] == ["decode_error", "ok", "empty", "decode_error", "ok"]

    # decoded pixels (an `image` column, no bytes): the same labels for the same pixels; bad arrays are rows
    good = decode_image((image_dir / "chelsea.png").read_bytes()).image
    images = np.empty(4, dtype=object)  # a ragged column, as Ray Data gives images of different sizes
    for i, image in enumerate([good, good.astype(np.float32), np.zeros((0, 0, 3), np.uint8), good[:, :, 0]]):
        images[i] = image
    ids = np.array(["a", "b", "c", "d"], dtype=object)
    got = Labeler(spec, id_column="id")({"image": images, "id": ids}).to_pylist()
    assert [r["status"] for r in got] == ["ok", "unsupported", "empty", "ok"]
    assert "dtype float32" in got[1]["error"] and got[2]["error"] == "zero pixels"
    ref = cli_rows[stable_id(str(image_dir / "chelsea.png"))]
    assert got[0]["segments"] == ref["segments"] and (got[0]["width"], got[0]["height"]) == (ref["width"],
                                                                                           ref["height"])
    assert [r["source_uri"] for r in got] == ["a", "b", "c", "d"]


def test_missing_columns_are_a_clear_error_and_s3_paths_get_their_scheme(ray_local, spec):
    from jobs.inputs import stable_id

    labeler = Labeler(spec)
    with pytest.raises(ValueError, match=r"no 'bytes' \(encoded images.*'image' \(decoded arrays.*\['data', 'path'\]"):
        labeler({"data": np.array([b"x"], dtype=object), "path": np.array(["/x.jpg"], dtype=object)})
    with pytest.raises(ValueError, match="no 'path' column"):
        labeler({"bytes": np.array([b"x"], dtype=object)})
    # read_binary_files gives object-store paths without their scheme: scheme="s3" restores the CLI's URI and id
    (row,) = Labeler(spec, scheme="s3")({"bytes": np.array([b""], dtype=object),
                                         "path": np.array(["bucket/in/a.jpg"], dtype=object)}).to_pylist()
    assert (row["source_uri"], row["image_id"]) == ("s3://bucket/in/a.jpg", stable_id("s3://bucket/in/a.jpg"))
    assert (row["status"], row["error"]) == ("empty", "zero bytes")


class DiesOnce(Labeler):
    """A labeler whose first call anywhere kills its actor's process (as an OOM kill or a lost node would);
    every construction is recorded in ``marks``."""

    def __init__(self, spec, *, marks: str):
        super().__init__(spec)
        self.marks = pathlib.Path(marks)
        (self.marks / f"init-{os.getpid()}-{len(list(self.marks.iterdir()))}").touch()

    def __call__(self, batch):
        try:
            (self.marks / "killed").touch(exist_ok=False)
        except FileExistsError:
            return super().__call__(batch)
        os._exit(1)


def test_an_actor_killed_mid_run_is_restarted_with_its_text_embeddings(ray_local, image_dir, spec, cli_rows,
                                                                        tmp_path):
    """Ray Data restarts the dead actor from the constructor arguments it owns (the spec, embeddings by value)
    and retries the batch: still every image exactly once, with the CLI's rows."""
    import ray

    marks = tmp_path / "marks"
    marks.mkdir()
    ds = ray.data.read_binary_files(str(image_dir), include_paths=True)
    rows = ds.map_batches(DiesOnce, fn_constructor_kwargs={"spec": spec, "marks": str(marks)}, concurrency=1,
                          num_cpus=0.5, batch_size=4).take_all()
    assert (marks / "killed").exists()
    inits = sorted(p.name for p in marks.iterdir() if p.name.startswith("init-"))
    assert len({name.split("-")[1] for name in inits}) >= 2, inits  # a second process built the labeler again
    assert sorted(r["image_id"] for r in rows) == sorted(cli_rows)  # every image once, none lost or doubled
    for r in rows:
        assert _comparable(r) == _comparable(cli_rows[r["image_id"]]), r["source_uri"]
