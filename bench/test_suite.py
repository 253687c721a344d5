"""Time the test suite the way CI runs it and write the numbers (``bench/results/test_suite.json``).

    .venv/bin/python bench/test_suite.py --out bench/results/test_suite.json [--checkout DIR]

Runs the README's test command, ``bash scripts/test.sh`` (install check, ``ruff check .``, the whole suite), with
pytest's JUnit XML report, and reads from it what each run took. With ``--checkout DIR`` the same command of another
checkout (an older commit, with its own ``.venv``) runs first, then this one: one after the other, never at once,
so the two are measured under the same conditions. Nothing is timed inside the tests; the machine is shared, so
the report records the load average before and after each run and the CPU flags and count.

Per run: ``seconds`` (pytest's session time, the ``N passed in S`` figure), ``command_seconds`` (the whole command:
install check and lint included), test counts by outcome, ``workers`` (pytest-xdist workers; 0 = one process),
``test_seconds_sum`` (setup + call + teardown summed over tests: the work the workers shared) and the 15 slowest
tests. ``--unit-tier`` also times this code's unit tier alone (``pytest -m "not job and not slow"``, one process).
Exit 1 when a run has a failed test (the numbers are still written).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import Dict, List, Optional

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import key_cpu_flags, write_report  # noqa: E402


def _git_head(code: pathlib.Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _workers(code: pathlib.Path) -> int:
    """Workers the checkout's scripts/test.sh asks for (0 when it does not use pytest-xdist)."""
    script = (code / "scripts" / "test.sh").read_text()
    if "-n " not in script:
        return 0
    return int(os.environ.get("RESLABEL_TEST_WORKERS", "2"))


def read_junit(path: pathlib.Path) -> Dict[str, object]:
    """Counts, session seconds and per-test seconds from a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    per_test: List[tuple] = []
    outcomes = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in suite.iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        per_test.append((float(case.get("time") or 0.0), name))
        kinds = {child.tag for child in case}
        outcome = ("failed" if "failure" in kinds else "error" if "error" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
        outcomes[outcome] += 1
    per_test.sort(reverse=True)
    return {
        "seconds": round(float(suite.get("time") or 0.0), 1),
        "tests": outcomes,
        "test_seconds_sum": round(sum(s for s, _ in per_test), 1),
        "slowest_15": [{"seconds": round(s, 1), "test": n} for s, n in per_test[:15]],
    }


UNIT_TIER = [".venv/bin/python", "-m", "pytest", "-q", "-m", "not job and not slow"]  # README: the edit-test loop


def run_suite(code: pathlib.Path, extra: List[str], command: Optional[List[str]] = None,
              workers: Optional[int] = None) -> Dict[str, object]:
    """``command`` (default ``bash scripts/test.sh``, whose workers ``_workers`` reads) in checkout ``code``; its
    JUnit numbers plus the command's own wall time."""
    if command is None:
        command, workers = ["bash", "scripts/test.sh"], _workers(code)
    with tempfile.TemporaryDirectory(prefix="reslabel-suite-") as tmp:
        junit = pathlib.Path(tmp) / "junit.xml"
        load_before = os.getloadavg()
        t = time.perf_counter()
        proc = subprocess.run([*command, f"--junitxml={junit}", *extra], cwd=code, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if not junit.exists():
            raise SystemExit(f"{code}: {' '.join(command)} wrote no report (exit {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        out = read_junit(junit)
    summary = next((ln for ln in reversed(proc.stdout.splitlines()) if " in " in ln and "passed" in ln), "")
    return {"commit": _git_head(code), "command": " ".join(command), "workers": workers,
            "exit_code": proc.returncode, "command_seconds": round(wall, 1), **out, "pytest_summary": summary.strip(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the JSON report here too")
    ap.add_argument("--checkout", help="another checkout (its own .venv) whose suite runs first, as `before`")
    ap.add_argument("--unit-tier", action="store_true", help="also time this code's unit tier alone (`unit_tier`)")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments for both runs (e.g. -m 'not slow')")
    a = ap.parse_args(argv)
    report: Dict[str, object] = {"machine": {"cpus": os.cpu_count(), "cpu_flags": key_cpu_flags()}}
    if a.checkout:
        report["before"] = run_suite(pathlib.Path(a.checkout).resolve(), a.pytest_args)
    report["after"] = run_suite(ROOT, a.pytest_args)
    if a.unit_tier:
        report["unit_tier"] = run_suite(ROOT, a.pytest_args, UNIT_TIER, workers=0)
    report["measured_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_report(report, a.out)
    runs = [report[k] for k in ("before", "after", "unit_tier") if k in report]
    return 1 if any(r["tests"]["failed"] or r["tests"]["error"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
