"""Vocabulary parsing (benchmark file format), templates, and the errors raised before model work."""
from __future__ import annotations

import os
import re

import pytest

from pipeline.config import ConfigError
from pipeline.model.vocabulary import BENCHMARK_VOCABULARIES, Vocabulary, default_templates

# (queries, classes) per benchmark, docs/method.md §1.3
EXPECTED = {"voc21": (56, 21), "voc20": (30, 20), "coco_object": (113, 81), "context60": (60, 60),
            "context59": (59, 59), "cityscapes": (19, 19), "ade20k": (150, 150), "coco_stuff": (171, 171)}


@pytest.mark.parametrize("name", sorted(BENCHMARK_VOCABULARIES))
def test_benchmark_vocabularies(name):
    v = Vocabulary.load(name)
    assert (v.num_queries, v.num_classes) == EXPECTED[name]
    assert len(v.templates) == 80 and v.templates == default_templates()
    assert max(v.query_to_class) == v.num_classes - 1


def test_synonyms_map_to_their_line():
    v = Vocabulary.from_text("sky, wall, tree\ncat\ndog, puppy\n")
    assert v.query_names == ("sky", "wall", "tree", "cat", "dog", "puppy")
    assert v.query_to_class == (0, 0, 0, 1, 2, 2)
    assert v.class_names == ("sky", "cat", "dog")


def test_only_newline_is_stripped():
    v = Vocabulary.from_text("cat\nwood \n")
    assert v.query_names == ("cat", "wood ")  # parity: the official loader keeps the trailing space


def test_context60_keeps_trailing_space():
    assert Vocabulary.load("context60").query_names[-1] == "wood "


def test_hash_depends_on_content_not_source():
    a = Vocabulary.from_lines(["cat", "dog"], source="a")
    b = Vocabulary.from_lines(["cat", "dog"], source="b")
    c = Vocabulary.from_lines(["cat", "dog"], templates=["a {}."])
    assert a.hash == b.hash != c.hash


@pytest.mark.parametrize("lines,templates,match", [
    ([], None, "empty"),
    (["cat", "dog", "cat"], None, "duplicate class names \\['cat'\\]"),
    (["cat", ""], None, "line 2 has an empty class name"),
    (["cat, "], None, "empty class name"),
    (["cat"], ["a photo of a cat."], "exactly one"),
    (["cat"], ["{} and {}"], "exactly one"),
    (["cat"], [], "no prompt templates"),
])
def test_bad_vocabularies(lines, templates, match):
    with pytest.raises(ConfigError, match=match):
        Vocabulary.from_lines(lines, templates)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.txt: file not found"):
        Vocabulary.load(str(tmp_path / "nope.txt"))


def test_file_and_templates_load(tiny_vocab_file, tiny_templates_file):
    v = Vocabulary.load(tiny_vocab_file, tiny_templates_file)
    assert v.num_queries == 7 and v.num_classes == 4
    assert v.prompts("cat") == ["a photo of a cat.", "a bad photo of the cat."]


def test_names_are_literal(tmp_path):
    (tmp_path / "v").write_text("wrong\n")  # what a URL-chain parse of "v::1.txt" would read
    (tmp_path / "v::1.txt").write_text("cat\ndog, puppy\n")
    (tmp_path / "t?x#y.txt").write_text("a photo of a {}.\n")
    v = Vocabulary.load(str(tmp_path / "v::1.txt"), f"file://{tmp_path / 't?x#y.txt'}")
    assert v.class_names == ("cat", "dog") and v.templates == ("a photo of a {}.",)


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b"cat\n\xffdog\n"), "not UTF-8 text: byte 0xff at position 4"),
    (lambda p: p.mkdir(), "is a directory, expected a text file"),
    (lambda p: os.mkfifo(p), r"not a regular file \(FIFO\), expected a text file"),
    (lambda p: None, "file not found"),
])
def test_unreadable_files_are_one_config_error(tmp_path, make, message):
    path = tmp_path / "classes.txt"
    make(path)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}$"):
        Vocabulary.load(str(path))


def test_other_os_errors_name_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "classes.txt"  # a path through a regular file: NotADirectoryError
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: cannot read: Not a directory$"):
        Vocabulary.load("voc21", str(path))
