#!/usr/bin/env bash
# Call the dualdistill teacher's HTTP API with curl: health, models, then top-k logits for one sequence.
#
#   TEACHER_URL=http://127.0.0.1:8000 DUALDISTILL_API_KEY=... MODEL=teacher ./examples/curl.sh
#
# TOKEN_IDS are the sequence's token ids (the model's own tokenizer; POST /v1/generate returns a prompt's
# ids); START is the first position scored; docs/api.md has every field.
set -euo pipefail

URL=${TEACHER_URL:-http://127.0.0.1:8000}
TOKEN_IDS=${TOKEN_IDS:-1,2,3,4,5,6,7,8}
START=${START:-1}
TOP_K=${TOP_K:-5}
AUTH=()
if [[ -n "${DUALDISTILL_API_KEY:-}" ]]; then
  AUTH=(-H "Authorization: Bearer ${DUALDISTILL_API_KEY}")
fi

echo "# GET /healthz (alive) and /readyz (200 once every model is loaded; 503 while loading or draining)"
curl -fsS "$URL/healthz"; echo
curl -fsS "$URL/readyz"; echo

echo "# GET /v1/models"
models=$(curl -fsS "${AUTH[@]}" "$URL/v1/models")
echo "$models"
# The first model's name unless MODEL is set; "name" is a key of model entries only, so the first match is
# the first model (grep and sed, so no JSON tool is needed).
MODEL=${MODEL:-$(printf '%s' "$models" | grep -o '"name": *"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/')}
if [[ -z "$MODEL" ]]; then
  echo "could not read a model name from /v1/models; set MODEL" >&2
  exit 1
fi

echo "# POST /v1/logits (model $MODEL, format json): one row per position in [start, T); null = -inf"
curl -fsS "${AUTH[@]}" -X POST "$URL/v1/logits" \
  -H "Content-Type: application/json" \
  -H "x-request-id: curl-example" \
  -d "{\"model\": \"$MODEL\", \"sequences\": [{\"token_ids\": [$TOKEN_IDS], \"start\": $START}], \"top_k\": $TOP_K, \"format\": \"json\"}"
echo
