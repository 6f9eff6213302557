#!/usr/bin/env bash
# GPU smoke test of the multi-GPU training paths that cannot run on a CPU-only machine
# (Accelerate turns an FSDP config into plain DDP there):
#
#   scripts/gpu_smoke.sh [NUM_GPUS]          (default: every visible GPU, at least 2 recommended)
#
# For each of cfg/accelerate/{fsdp,deepspeed_zero2,deepspeed_zero3}.yaml it trains a tiny random-initialised
# captioner on generated features for 10 steps (checkpoint every 5, caption-metric validation with generation
# sharded over the ranks), then reruns the same command with a 20-step budget, which must RESUME from step 10,
# and checks: the resume happened, the last checkpoint is step 20, final/ and best/ were exported from the
# gathered state dict and load in evaluate.py, and the logged global batch is the configured one.
# Needs: CUDA GPUs, `pip install deepspeed` for the DeepSpeed runs. Exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_GPUS="${1:-$(python -c 'import torch; print(torch.cuda.device_count())')}"
if (( NUM_GPUS < 1 )); then echo "gpu_smoke: no CUDA GPU visible" >&2; exit 2; fi
WORK="${SMOKE_DIR:-$(mktemp -d -t enclap-gpu-smoke-XXXX)}"
echo "gpu_smoke: $NUM_GPUS GPU(s), work directory $WORK"

# Tiny features and manifests (the test suite's generator: random codes, 16 codebooks, short captions).
python - "$WORK" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.training import make_feature_set
make_feature_set(Path(sys.argv[1]) / "data", num_train=64, num_val=7)
PY

BATCH=$(( 4 * NUM_GPUS ))   # global batch: 4 per GPU
overrides() {  # $1 output dir, $2 step budget
  python - "$WORK" "$1" "$2" "$BATCH" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.training import tiny_overrides
root = Path(sys.argv[1]) / "data"
files = {"store": root / "store", "train_csv": root / "csv" / "train.csv", "val_csv": root / "csv" / "valid.csv"}
extra = {"train.max_train_steps": sys.argv[3], "train.checkpointing_steps": 5, "train.eval_steps": 5,
         "train.train_batch_size": int(sys.argv[4]), "train.mixed_precision": "auto", "validation.metrics": "[cider_d]",
         "train.best_metric": "cider_d", "validation.num_beams": 1, "model.d_model": 64, "model.ffn_dim": 128}
print("\n".join(tiny_overrides(files, Path(sys.argv[2]), **extra)))
PY
}

for name in fsdp deepspeed_zero2 deepspeed_zero3; do
  out="$WORK/$name"
  for steps in 10 20; do
    mapfile -t ARGS < <(overrides "$out" "$steps")
    echo "gpu_smoke: $name, $steps steps"
    accelerate launch --config_file "cfg/accelerate/$name.yaml" --num_processes "$NUM_GPUS" \
      train.py "${ARGS[@]}" 2> "$out.$steps.log" || { tail -50 "$out.$steps.log"; echo "gpu_smoke: $name FAILED ($steps steps)" >&2; exit 1; }
  done
  grep -q "resuming from $out/checkpoints/step_10" "$out.20.log" || { echo "gpu_smoke: $name did not resume from step 10" >&2; exit 1; }
  grep -q "global batch $BATCH = $NUM_GPUS process(es)" "$out.10.log" || { echo "gpu_smoke: $name: global batch not as configured" >&2; exit 1; }
  [[ -d "$out/checkpoints/step_20" && -f "$out/final/model.safetensors" && -f "$out/best/model.safetensors" ]] \
    || { echo "gpu_smoke: $name: missing checkpoint step_20 or final/ / best/ export" >&2; exit 1; }
  python evaluate.py --ckpt "$out/final" --features "$WORK/data/store" --test_csv "$WORK/data/csv/valid.csv" \
    --metrics bleu_1 --device cuda > "$out.eval.log" 2>&1 || { tail -30 "$out.eval.log"; echo "gpu_smoke: $name: final/ does not evaluate" >&2; exit 1; }
  echo "gpu_smoke: $name OK"
done
echo "gpu_smoke: all passed ($WORK)"
