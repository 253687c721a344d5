#!/usr/bin/env bash
# Quick start: install into .venv, then label the bundled sample images with a local Ray.
#   bash scripts/demo.sh            # OpenAI ViT-B/16 weights where internet exists, else smoke mode
#   RESLABEL_DEMO_OFFLINE=1 bash scripts/demo.sh   # force the offline smoke mode (random weights)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
OUT=${OUT:-out/demo}
PY=.venv/bin/python

if [ -z "${RESLABEL_DEMO_OFFLINE:-}" ] && $PY - <<'PYEOF'
import socket, sys
try:
    socket.create_connection(("huggingface.co", 443), timeout=5).close()
except OSError:
    sys.exit(1)
PYEOF
then
  WEIGHTS=(--pretrained openai)
else
  echo "demo: no internet (or RESLABEL_DEMO_OFFLINE set): running the OFFLINE SMOKE MODE with random weights." >&2
  echo "demo: everything runs for real, but the LABELS ARE MEANINGLESS." >&2
  WEIGHTS=(--random-weights)
fi

$PY -m jobs.label --input pipeline/data/samples --output "$OUT" --preset voc21 \
  --vocabulary pipeline/data/samples/vocabulary.txt "${WEIGHTS[@]}" --num-actors 1 --cpus-per-actor 1

RUN=$(ls -d "$OUT"/runs/*/ | sort | tail -n 1)
$PY -m jobs.overlay --run "$RUN" --out "$OUT/sheet.png" --n 4 --cols 2 --thumb 320
echo "demo: labels in $RUN (part-*.parquet, _SUCCESS.json); contact sheet $OUT/sheet.png"
if [ "${WEIGHTS[0]}" = "--random-weights" ]; then
  echo "demo: SMOKE MODE — random weights, the labels above are MEANINGLESS." >&2
fi
