#!/usr/bin/env bash
# Create .venv (once) and install reslabel with its job and test extras, pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# tests/test_report_browser.py opens the QA report in Debian's Chromium through chromedriver; installed once,
# skipped when present or when apt-get cannot run here (the test then skips, and fails under CI).
if ! command -v chromedriver > /dev/null 2>&1 && command -v apt-get > /dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
    > /dev/null 2>&1 || echo "install.sh: could not install chromium chromium-driver (apt-get)" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.reslabel-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[jobs,test]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, open_clip, ray, pyarrow, pycocotools, cv2" \
    || { echo "install.sh: dependencies failed to import" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# Record the commit for `ray job submit --working-dir .`, which does not upload .git (schemas/version.py).
.venv/bin/python -m schemas.version --stamp > /dev/null \
  || echo "install.sh: no git checkout here: rows will name the code by its source digest" >&2
