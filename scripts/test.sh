#!/usr/bin/env bash
# The test command of README.md and .ci/run: install (if needed), lint (ruff, config in pyproject.toml), then run
# the whole suite on RESLABEL_TEST_WORKERS pytest-xdist workers (default 2, one per core of the CI machine: the
# suite is CPU-bound, docs/performance.md; tests/conftest.py orders it longest tier first). RESLABEL_TEST_WORKERS=0
# runs it in this one process (pdb, -s). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -ra --durations=15 -n "${RESLABEL_TEST_WORKERS:-2}" --dist loadgroup "$@"
