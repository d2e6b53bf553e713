#!/usr/bin/env bash
# The GPU check, one prepared script for the minutes a GPU machine is lent (issue 34):
#   1. the tests of the CUDA paths (tests marked gpu: capture, masks, every update, offload streaming,
#      the Ray worker with gpus_per_trial), when the device is CUDA;
#   2. the device benchmarks (search_throughput, kl_cost, capture_cost, memory_scaling) on the device,
#      each writing its JSON and Markdown under OUT.
#
#   bash scripts/gpu-check.sh [--device cuda|cuda:N|cpu] [--tiny] [--out DIR] [--data-dir DIR]
#
# Without --tiny: SmolLM2-135M and Gemma-3-270M at the acceptance settings (C4 32 x 512), sized to end
# within 8 minutes on one H100. --tiny: a tiny random Llama (scripts/tiny_model.py) and tiny settings,
# so that CI runs the same script on CPU (tests/test_gpu_check.py) and it never rots.
set -euo pipefail
device=cuda; tiny=0; out=""; data="${AUTOML_PRUNE_DATA_DIR:-../shared/data}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --data-dir) data="$2"; shift 2 ;;
    *) echo "gpu-check: unknown argument $1 (use --device, --tiny, --out, --data-dir)" >&2; exit 2 ;;
  esac
done
here="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
out="${out:-$here/benchmarks/results/gpu-check-${device//:/}}"
mkdir -p "$out"
[ -d "$data" ] || { echo "gpu-check: no data folder $data (give --data-dir DIR)" >&2; exit 2; }
start=$(date +%s)
step() { echo "[gpu-check $(( $(date +%s) - start )) s] $*"; }

if [[ "$device" == cuda* ]]; then
  step "tests of the CUDA paths"
  (cd "$here" && "$PY" -m pytest -q -m gpu tests/test_gpu.py) | tee "$out/tests.txt"
fi

if [ "$tiny" = 1 ]; then
  models=("$("$PY" "$here/scripts/tiny_model.py" "$out/tiny-llama" | tail -1)")
  names=(tiny); calib=(4 64); probe=(2 64); candidates=2; tokens=(64 256); capture=(4 64); depths="tiny-64x2,tiny-64x4"
  phases=capture
else
  models=(smollm2-135m gemma3-270m); names=(smollm2 gemma3)
  calib=(32 512); probe=(8 512); candidates=8; tokens=(1024 8192); capture=(32 512); depths=""
  phases=capture,candidate
fi

for i in "${!models[@]}"; do
  model="${models[$i]}"; name="${names[$i]}"; config="$out/$name.yaml"
  "$PY" - "$model" "$data" "$device" "$config" "${calib[@]}" "${probe[@]}" <<'PY'
import sys, yaml
model, data, device, path, n, L, pn, pl = sys.argv[1:9]
yaml.safe_dump({"model": model, "device": device, "data_dir": data,
                "calibration": {"source": "c4", "nsamples": int(n), "seqlen": int(L), "seed": 0},
                "probe": {"nsamples": int(pn), "seqlen": int(pl), "seed": 1},
                "heldout": {"source": "wikitext2", "seqlen": 2 * int(L), "windows": 2},
                "space": {"metric": {"name": "bawa"}, "allocation": "uniform",
                          "pattern": {"name": "unstructured", "sparsity": 0.5}},
                "objectives": [{"name": "kl", "params": {"windows": 2, "topk": 64}}],
                "searcher": {"name": "tpe", "seed": 0}, "budget": {"trials": 10}}, open(path, "w"))
PY
  step "$name: search throughput on $device"
  "$PY" "$here/benchmarks/search_throughput.py" --config "$config" --device "$device" --candidates "$candidates" \
      --reload-candidates 1 --stem "$name-search-throughput" --results-dir "$out"
  step "$name: KL cost on $device"
  "$PY" "$here/benchmarks/kl_cost.py" --config "$config" --device "$device" --tokens "${tokens[@]}" \
      --probe-seqlen "${probe[1]}" --heldout-windows 2 --candidates 2 --stem "$name-kl-cost" --results-dir "$out"
  step "$name: capture cost on $device"
  "$PY" "$here/benchmarks/capture_cost.py" --model "$model" --device "$device" --nsamples "${capture[0]}" \
      --seqlen "${capture[1]}" --repeats 1 --data-dir "$data" --cache-dir "$out/cache" --out "$out/$name-capture-cost"
done
step "memory by depth and offload on $device"
"$PY" "$here/benchmarks/memory_scaling.py" ${depths:+--models "$depths"} --phases "$phases" --offload none,disk \
    --nsamples "${calib[0]}" --seqlen "${calib[1]}" --device "$device" --data-dir "$data" --stem memory-scaling \
    --results-dir "$out"
step "done: results in $out"
