#!/usr/bin/env bash
# The GPU runs as one prepared script for one GPU, in the order they matter, inside a time
# budget (a lent GPU comes with minutes, not hours):
#   1. the book's 10-epoch VGG (224 px) and the improved 10-epoch ResNet-18 (96 px), side by
#      side on the one GPU (their images/s are those of two runs sharing it);
#   2. `jaxcnn bench lenet resnet18 vgg --compare-torch` (the book's PyTorch models on the same
#      GPU) in float32, then jaxcnn alone in bfloat16, with nothing else running;
#   3. with the time left: the test suite on the GPU.
# Each part runs under `timeout` with what is left of the budget; a part that fails or is cut
# does not stop the next, and its log and the summary say how it ended. A cut training keeps
# its completed epochs in metrics.jsonl.
#
# Run from the repository root, with jaxcnn importable (pip install -e '.[cuda12]' or
# '.[cuda13]', or PYTHONPATH=. where jax with CUDA is already installed) and the Fashion-MNIST
# files reachable (--data-dir, JAXCNN_FASHION_MNIST, tfds's manual dir, or Debian's package):
#
#     bash experiments/gpu_suite.sh OUTDIR [BUDGET_S [TRAIN_CAP_S]]
#
# BUDGET_S: seconds for the whole script (default 3600); TRAIN_CAP_S: at most this many for the
# two training runs (default 1800), so that the benchmark keeps its share. SUITE_TRAIN_ARGS:
# extra `jaxcnn train` flags for a reduced rehearsal (e.g. "--epochs 1 --train-examples 1280").
# Writes OUTDIR/{summary.txt,devices.txt,*.log,bench-*.json,vgg-book/,resnet18-improved/}.
set -uo pipefail
out="${1:-runs/gpu-suite}"
deadline=$(( $(date +%s) + ${2:-3600} ))
train_cap=${3:-1800}
mkdir -p "$out"

limit() {   # CAP_S: CAP_S or the budget left (less a margin), whichever is smaller
    local left=$(( deadline - $(date +%s) - 10 ))
    echo $(( left < $1 ? left : $1 ))
}
part() {    # NAME CAP_S COMMAND...: run under timeout, log to NAME.log, note how it ended
    local name=$1 cap start rc
    cap=$(limit "$2")
    shift 2
    if (( cap < 15 )); then
        echo "$name: skipped, budget spent" | tee -a "$out/summary.txt"
        return
    fi
    start=$(date +%s)
    timeout -k 5 "$cap" "$@" > "$out/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc$( (( rc == 124 || rc == 137 )) && echo " (cut at ${cap} s)"), \
$(( $(date +%s) - start )) s wall" | tee -a "$out/summary.txt"
}
train() {   # NAME CAP_S MODEL [FLAGS]: a 10-epoch training run into OUTDIR/NAME
    local name=$1 cap=$2 model=$3
    shift 3
    # shellcheck disable=SC2086  # SUITE_TRAIN_ARGS is a list of flags
    part "$name" "$cap" python3 -m jaxcnn train "$model" --workdir "$out/$name" \
        --checkpoint-every 0 "$@" ${SUITE_TRAIN_ARGS:-}
}

{ python3 -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', \
jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
} > "$out/devices.txt" 2>&1
cat "$out/devices.txt"
part prepare-data 300 python3 -c "from jaxcnn import data; data.fashion_mnist('train')"

# Two processes on one GPU: each takes at most 40 % of its memory instead of JAX's 75 %.
nvidia-smi dmon -s u -d 5 > "$out/gpu-utilization.txt" 2>&1 &
dmon=$!
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.4
train vgg-book "$train_cap" vgg &
vgg=$!
train resnet18-improved "$train_cap" resnet18 --recipe improved &
wait "$vgg" $!
unset XLA_PYTHON_CLIENT_MEM_FRACTION
kill "$dmon" 2>/dev/null

part bench-float32 600 python3 -m jaxcnn bench lenet resnet18 vgg --compare-torch \
    --json "$out/bench-float32.json"
part bench-bfloat16 300 python3 -m jaxcnn bench lenet resnet18 vgg --dtype bfloat16 \
    --json "$out/bench-bfloat16.json"
# The tests start processes of their own: none may take 75 % of the GPU's memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
part tests 1800 python3 -m pytest -q -rf -p no:cacheprovider tests
