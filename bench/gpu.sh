#!/usr/bin/env bash
# GPU benchmarks in one run (< 13 minutes on the GPUs of one machine, no network):
#   1. service overhead: a random-init Llama of 1.10B parameters (bench/models.py "llama-1b": 20 layers,
#      hidden 2048, vocabulary 49152, the tiny fixture's tokenizer) in bfloat16, served with
#      `dualdistill serve --device cuda`, against the same model's in-process forward + top-k;
#   2. loss memory and time: the loss variants with bfloat16 logits on the GPU
#      (peak memory = torch.cuda.max_memory_allocated growth);
#   3. when vLLM imports: the vllm engine, tensor parallel over every visible GPU, against an in-process
#      vLLM call with the same engine arguments (bench/vllm_tp.py; skipped, and said so, without vLLM).
#
#   bench/gpu.sh             on the GPU machine; results under $OUT (default bench/results/gpu)
#   bench/gpu.sh --dry-run   the same steps on CPU with a 26M-parameter model and quick loss sizes
#                            (checks the script's logic; results under $OUT or a temporary directory)
#
# Needs a Python with torch (CUDA build on the GPU machine), transformers and the project's server
# dependencies: $PYTHON, default .venv/bin/python. Everything else is built at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi

if [[ $DRY == 1 ]]; then
  OUT_DIR="${OUT:-$(mktemp -d -t dualdistill-gpu-dry-XXXXXX)}"
  DEVICE=cpu DTYPE=float32 MODEL=llama-small BATCHES=1,8 SEQ=128 REPS=2 THREADS=2
  LOSS_ARGS=(--quick --reps 2)
  SERVICE_LIMIT=600 LOSS_LIMIT=300 VLLM_LIMIT=600
else
  OUT_DIR="${OUT:-bench/results/gpu}"
  DEVICE=cuda DTYPE=bfloat16 MODEL=llama-1b BATCHES=1,8,32 SEQ=512 REPS=4 THREADS=4
  LOSS_ARGS=(--rounds 1 --reps 5 --lengths "512,2048")
  SERVICE_LIMIT=270 LOSS_LIMIT=170 VLLM_LIMIT=300
fi
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD:$PWD/client:$PWD/server${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DUALDISTILL_HOME="${DUALDISTILL_HOME:-$OUT_DIR/home}"

{
  date -u '+%Y-%m-%d %H:%M UTC'
  "$PY" - "$DEVICE" <<'EOF'
import sys, torch, transformers
device = sys.argv[1]
print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch: run on the GPU machine, or use --dry-run")
    print(torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; fi
} 2>&1 | tee "$OUT_DIR/device.txt"

status=0
# each step has its own limit so that a slow one still leaves the other's results
timeout "$SERVICE_LIMIT" "$PY" bench/service_overhead.py --models "$MODEL" --batches "$BATCHES" \
  --seq-len "$SEQ" --reps "$REPS" --device "$DEVICE" --dtype "$DTYPE" --threads "$THREADS" \
  --parts ratio,cost --cost-model "$MODEL" \
  --results-dir "$OUT_DIR" --img-dir "$OUT_DIR" >"$OUT_DIR/service_overhead.log" 2>&1 || status=$?
echo "service_overhead: exit $status" | tee -a "$OUT_DIR/device.txt"

loss_status=0
timeout "$LOSS_LIMIT" "$PY" bench/loss_memory.py "${LOSS_ARGS[@]}" --device "$DEVICE" --dtype "$DTYPE" \
  --results-dir "$OUT_DIR" --img-dir "$OUT_DIR" >"$OUT_DIR/loss_memory.log" 2>&1 || loss_status=$?
echo "loss_memory: exit $loss_status" | tee -a "$OUT_DIR/device.txt"

vllm_status=0
if "$PY" -c "import vllm" >/dev/null 2>&1; then
  VLLM_ARGS=(); if [[ $DRY == 1 ]]; then VLLM_ARGS=(--dry-run); fi
  timeout "$VLLM_LIMIT" "$PY" bench/vllm_tp.py "${VLLM_ARGS[@]}" --results-dir "$OUT_DIR" \
    >"$OUT_DIR/vllm_tp.log" 2>&1 || vllm_status=$?
  echo "vllm_tp: exit $vllm_status" | tee -a "$OUT_DIR/device.txt"
else
  echo "vllm_tp: skipped (vLLM is not installed for $PY: pip install vllm)" | tee -a "$OUT_DIR/device.txt"
fi

rm -rf "$DUALDISTILL_HOME"
echo "results in $OUT_DIR:"
ls -1 "$OUT_DIR"
if [[ $status != 0 || $loss_status != 0 || $vllm_status != 0 ]]; then exit 1; fi
