"""Layering: schemas ← pipeline ← jobs. Importing the pipeline must never import ray."""
from __future__ import annotations

import subprocess
import sys


PIPELINE_MODULES = ["pipeline", "pipeline.decode", "pipeline.rle", "pipeline.segments", "pipeline.config",
                    "pipeline.models", "pipeline.text", "pipeline.vocabulary", "pipeline.segmenter",
                    "pipeline.presets", "pipeline.preprocess"]


def _imports_ray(modules: list) -> str:
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except ModuleNotFoundError as e:\n"
            "        if e.name != m: raise\n"
            "print('ray' in sys.modules)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_pipeline_never_imports_ray():
    assert _imports_ray(PIPELINE_MODULES) == "False"


def test_schemas_import_only_pyarrow():
    code = "import sys, schemas; print(sorted(m for m in ('torch', 'ray', 'numpy', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out in ("[]", "['numpy']")  # pyarrow may pull numpy in
