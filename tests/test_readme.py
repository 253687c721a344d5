"""The README's Python snippet is a test: run it with the tiny random model instead of OpenAI weights."""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _snippet() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split("<!-- readme-snippet", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_readme_snippet_runs(tiny_arch, tiny_weights, monkeypatch):
    code = _snippet()
    assert 'ModelConfig(pretrained="openai")' in code
    code = code.replace('ModelConfig(pretrained="openai")',
                        f"ModelConfig(arch={tiny_arch!r}, weights={tiny_weights!r})")
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == "(300, 451)"  # the snippet's "# prints:" comment
    assert lines[1].startswith("{")
    assert os.path.exists(ROOT / "pipeline/data/samples/chelsea.jpg")
