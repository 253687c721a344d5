"""The documentation stays true to the repository: generated tables equal their results files, links resolve,
the README stays a page for users."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_performance_tables_match_results_files():
    import importlib.util

    spec = importlib.util.spec_from_file_location("perf_doc", ROOT / "scripts" / "perf_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.DOC.read_text()
    assert mod.BLOCK.search(text), "docs/performance.md has no generated table"
    assert mod.main(["--check"]) == 0, "docs/performance.md is stale: run scripts/perf_doc.py"
    # every results file is listed, and a changed number is caught
    listed = mod.index()
    for path in (ROOT / "bench" / "results").glob("*.json"):
        assert f"`{path.name}`" in listed
    stale = text.replace(mod.RENDERERS["index"](), mod.RENDERERS["index"]().replace("CPU", "GPU", 1))
    assert mod.render(stale) == text


def test_relative_links_resolve():
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, missing


def test_readme_is_short_and_has_no_merge_placeholders():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert not re.search(r"<!-- [A-Z-]+ -->", text), "an unfilled placeholder is left in README.md"
