#!/usr/bin/env bash
# Quick start: install into .venv, then label the bundled sample images with a local Ray.
#   bash scripts/demo.sh            # OpenAI ViT-B/16 weights where internet exists, else smoke mode
#   RESLABEL_DEMO_OFFLINE=1 bash scripts/demo.sh   # force the offline smoke mode (random weights)
# Expected time on a 2-core CPU, first run: ~2.5 min to install (once; a second run skips it), then about a minute
# to label (bench/results/demo_after.json): Ray start, the ViT-B/16 model, the text embeddings of 960 prompts
# (12 queries x 80 templates; the log shows "text embeddings: batch i/n, ... s left"), 4 images, the contact sheet.
# With internet the OpenAI weights (~600 MB) are downloaded first. A second run reads the text embeddings from
# OUT/_text_cache instead of encoding them again.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "demo: first run: ~2.5 min to install into .venv (once), then about a minute to label 4 sample images" >&2
T0=$SECONDS
bash scripts/install.sh
echo "demo: install step: $((SECONDS - T0)) s" >&2
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

T1=$SECONDS
echo "demo: labeling: Ray start, model, text embeddings (progress lines 'text embeddings: batch i/n' below), 4 images" >&2
$PY -m jobs.label --input pipeline/data/samples --output "$OUT" --preset voc21 \
  --vocabulary pipeline/data/samples/vocabulary.txt "${WEIGHTS[@]}" --num-actors 1 --cpus-per-actor 1

RUN=$(ls -d "$OUT"/runs/*/ | sort | tail -n 1)
$PY -m jobs.overlay --run "$RUN" --out "$OUT/sheet.png" --n 4 --cols 2 --thumb 320
echo "demo: labels in $RUN (part-*.parquet, _SUCCESS.json); contact sheet $OUT/sheet.png"
echo "demo: labeling and contact sheet: $((SECONDS - T1)) s" >&2
if [ "${WEIGHTS[0]}" = "--random-weights" ]; then
  echo "demo: SMOKE MODE — random weights, the labels above are MEANINGLESS." >&2
fi
