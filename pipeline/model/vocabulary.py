"""Class vocabularies and prompt templates (docs/method.md §1.3).

File format (the benchmarks' ``cls_*.txt``): one class per line; a line may list synonyms separated by
``", "``; every synonym is its own *query* mapped to the line's class index. Only the trailing newline
is stripped (parity: the official loader does exactly that).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
from typing import Optional, Sequence, Tuple

from pipeline.config import ConfigError
from pipeline.io import uri as uris

BENCHMARK_VOCABULARIES = {
    "voc21": "cls_voc21.txt",
    "voc20": "cls_voc20.txt",
    "context60": "cls_context60.txt",
    "context59": "cls_context59.txt",
    "coco_object": "cls_coco_object.txt",
    "coco_stuff": "cls_coco_stuff.txt",
    "cityscapes": "cls_city_scapes.txt",
    "ade20k": "cls_ade20k.txt",
}


def _data_text(*parts: str) -> str:
    return importlib.resources.files("pipeline").joinpath("data", *parts).read_text(encoding="utf-8")


def default_templates() -> Tuple[str, ...]:
    """The 80 ImageNet prompt templates, in order (``{}`` is the class name)."""
    return tuple(line for line in _data_text("prompt_templates.txt").split("\n") if line)


def read_text_uri(uri: str) -> str:
    """Read a small UTF-8 text file from a local path or an s3:// URI, its name taken literally.

    Every failure is one ``ConfigError`` naming ``uri`` and the problem (missing, a directory or other
    non-regular file, unreadable, not UTF-8).
    """
    try:
        return uris.read_text(uri)
    except FileNotFoundError as e:
        raise ConfigError(f"{uri}: file not found") from e
    except uris.NotRegularFile as e:
        if e.what == "directory":
            raise ConfigError(f"{uri}: is a directory, expected a text file") from e
        raise ConfigError(f"{uri}: not a regular file ({e.what}), expected a text file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{uri}: not UTF-8 text: byte 0x{e.object[e.start]:02x} at position {e.start}") from e
    except OSError as e:
        raise ConfigError(f"{uri}: cannot read: {e.strerror or e}") from e


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Classes, their queries (synonyms), and the prompt templates.

    ``query_names[q]`` belongs to class ``query_to_class[q]``; ``class_names[c]`` is the first synonym of
    line ``c``. ``templates`` each contain exactly one ``{}``.
    """

    class_names: Tuple[str, ...]
    query_names: Tuple[str, ...]
    query_to_class: Tuple[int, ...]
    templates: Tuple[str, ...]
    source: str = "list"

    @classmethod
    def from_lines(cls, lines: Sequence[str], templates: Optional[Sequence[str]] = None,
                   source: str = "list") -> "Vocabulary":
        """Build from class lines (each may hold ``", "``-separated synonyms). Validates before any model work."""
        if not lines:
            raise ConfigError(f"vocabulary {source}: empty (no classes)")
        queries, q2c, names = [], [], []
        for c, line in enumerate(lines):
            syns = line.split(", ")
            if not line.strip() or any(not s.strip() for s in syns):
                raise ConfigError(f"vocabulary {source}: line {c + 1} has an empty class name: {line!r}")
            names.append(syns[0])
            queries.extend(syns)
            q2c.extend([c] * len(syns))
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"vocabulary {source}: duplicate class names {dupes}")
        # A query may repeat across lines (COCO-Object lists 'bed' as background synonym and as a class).
        templates = tuple(templates) if templates is not None else default_templates()
        _check_templates(templates, source)
        return cls(tuple(names), tuple(queries), tuple(q2c), templates, source)

    @classmethod
    def from_text(cls, text: str, templates: Optional[Sequence[str]] = None, source: str = "text") -> "Vocabulary":
        """Parse the benchmark file format. parity: only newlines are stripped (``"wood "`` keeps its space)."""
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines = lines[:-1]
        return cls.from_lines(lines, templates, source)

    @classmethod
    def load(cls, vocabulary: str, templates: Optional[str] = None) -> "Vocabulary":
        """``vocabulary``: a benchmark name (see ``BENCHMARK_VOCABULARIES``) or a path/URI;
        ``templates``: None or a path/URI.
        """
        tpl = None
        if templates is not None:
            tpl = [t for t in read_text_uri(templates).split("\n") if t.strip()]
        if vocabulary in BENCHMARK_VOCABULARIES:
            text = _data_text("classnames", BENCHMARK_VOCABULARIES[vocabulary])
        else:
            text = read_text_uri(vocabulary)
        return cls.from_text(text, tpl, source=vocabulary)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_queries(self) -> int:
        return len(self.query_names)

    @property
    def hash(self) -> str:
        """Content hash of queries, their classes and the templates (not of the source path)."""
        blob = json.dumps([self.query_names, self.query_to_class, self.templates]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def prompts(self, query: str) -> list:
        return [t.format(query) for t in self.templates]


def _check_templates(templates: Sequence[str], source: str) -> None:
    if not templates:
        raise ConfigError(f"vocabulary {source}: no prompt templates")
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise ConfigError(f"prompt template {t!r} must contain exactly one '{{}}' and no other braces")
