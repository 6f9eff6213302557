#!/usr/bin/env bash
# Train the EnCLAP captioner with `accelerate launch`, as the reference's train.sh does.
#
#   ./train.sh [CONFIG.yaml] [key=value ...]        e.g. ./train.sh cfg/clotho/base.yaml train.learning_rate=1e-4
#
# Batch sizes in the configs are GLOBAL (examples per optimizer step over all processes), so the number
# of processes does not change the recipe: on N GPUs each reads train_batch_size / N per step.
# This script forces no launcher setting: mixed precision, accumulation, FSDP / DeepSpeed come from your
# `accelerate config` or from ACCELERATE_ARGS, and the config's explicit values win (the log says which).
#
# Environment:
#   NUM_PROCESSES    processes (GPUs) to launch (default: your `accelerate config`, else every visible GPU, else 1)
#   PORT             main process port (default 29500)
#   ACCELERATE_ARGS  further `accelerate launch` flags, e.g. "--config_file cfg/accelerate/fsdp.yaml"
#                    or "--mixed_precision bf16 --gradient_accumulation_steps 2"
#   CPU=1            train on CPU. Several CPU processes need accelerate's --multi_gpu with ACCELERATE_USE_CPU=true,
#                    which this script sets up: `accelerate launch --cpu --num_processes 2` silently runs ONE process.
#                    e.g.  CPU=1 NUM_PROCESSES=2 ./train.sh cfg/clotho/base.yaml
#   (torchrun works too: torchrun --nproc_per_node 2 train.py --config CONFIG.yaml)
#
# Rerunning the same command resumes from the last checkpoint in the config's output_dir.
set -euo pipefail
cd "$(dirname "$0")"

# The config file is optional: a first argument that is not a .yaml file is already an override.
CFG_PATH="cfg/clotho/base.yaml"
if [[ $# -gt 0 && ( "$1" == *.yaml || "$1" == *.yml ) ]]; then
  CFG_PATH="$1"
  shift
fi
PORT="${PORT:-29500}"
read -r -a EXTRA <<< "${ACCELERATE_ARGS:-}"
DEFAULT_CONFIG="${HF_HOME:-$HOME/.cache/huggingface}/accelerate/default_config.yaml"
if [[ -z "${NUM_PROCESSES:-}" ]]; then
  if [[ "${CPU:-0}" == "1" ]]; then
    NUM_PROCESSES=1
  elif [[ -f "$DEFAULT_CONFIG" || " ${EXTRA[*]:-} " == *" --config_file "* ]]; then
    NUM_PROCESSES=""   # the accelerate config decides
  else
    NUM_PROCESSES="$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
  fi
fi

LAUNCH=(accelerate launch --main_process_port "$PORT")
if [[ -n "$NUM_PROCESSES" ]]; then
  LAUNCH+=(--num_processes "$NUM_PROCESSES")
fi
if [[ "${CPU:-0}" == "1" ]]; then
  export ACCELERATE_USE_CPU=true OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  if (( NUM_PROCESSES > 1 )); then LAUNCH+=(--multi_gpu); else LAUNCH+=(--cpu); fi
elif [[ -n "$NUM_PROCESSES" ]] && (( NUM_PROCESSES > 1 )) && [[ " ${EXTRA[*]:-} " != *" --config_file "* ]]; then
  LAUNCH+=(--multi_gpu)
fi

exec "${LAUNCH[@]}" ${EXTRA[@]+"${EXTRA[@]}"} train.py --config "$CFG_PATH" "$@"
