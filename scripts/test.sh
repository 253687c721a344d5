#!/usr/bin/env bash
# The test command of README.md and .ci/run: install (if needed), lint (ruff, config in pyproject.toml), then run
# the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
