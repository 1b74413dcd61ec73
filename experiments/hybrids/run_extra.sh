#!/bin/bash
# The runs added after the first results of run_reduced.sh (README): soft attention without
# the doubly stochastic regulariser (lambda = 0), greedy and beam 4; the identity models
# trained twice as long (6 epochs). Same pinning and workdir layout as run_reduced.sh.
# Usage (from the repository root): experiments/hybrids/run_extra.sh [RUNS_DIR] [CORE]
set -u
RUNS=${1:-workdirs/hybrids}
CORE=${2:-0}
MNIST=${MNIST_DIR:-../shared/datasets/mnist}
PY=${PYTHON:-python}
run() {  # run NAME CONFIG ARGS...: one pinned, single-threaded cnnrnn.main, timed in the log.
  local name=$1 config=$2; shift 2
  local t0=$(date +%s)
  echo "$(date -u +%T) start $name" >> "$RUNS/log.txt"
  taskset -c "$CORE" env \
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD $PY -m cnnrnn.main --config="$config" \
    --workdir="$RUNS/$name" --config.dataset.manual_dir="$MNIST" \
    --config.dataset.data_dir="$RUNS/tfds" "$@" > "$RUNS/$name.out" 2>&1
  local rc=$? test
  test=$(grep '^Test' "$RUNS/$name.out")
  echo "$(date -u +%T) end $name rc=$rc wall=$(( $(date +%s) - t0 ))s: $test" >> "$RUNS/log.txt"
}
CAPTIONS=(--config.dataset.num_train=20000 --config.dataset.num_test=1000
          --config.num_train_steps=800 --config.eval_every_steps=200 --config.log_every_steps=50
          --config.task.attention_penalty=0.0)
run captions_attention_lambda0 configs/mnist_captions.py:attention "${CAPTIONS[@]}"
rm -rf "$RUNS/captions_attention_lambda0_beam4"
cp -r "$RUNS/captions_attention_lambda0" "$RUNS/captions_attention_lambda0_beam4"
run captions_attention_lambda0_beam4 configs/mnist_captions.py:attention "${CAPTIONS[@]}" \
  --config.task.beam_size=4 --allow_change=task.beam_size
VIDEO=(--config.dataset.num_frames=10 --config.dataset.size=64 --config.dataset.speed=8
       --config.dataset.num_train=3000 --config.dataset.num_test=1000 --config.num_epochs=6
       --config.eval_every_steps=140 --config.log_every_steps=10)
for v in single_frame lstm bilstm; do
  run "mm_${v}_identity_6ep" configs/moving_mnist_video.py:$v,identity "${VIDEO[@]}"
done
echo "$(date -u +%T) extra done" >> "$RUNS/log.txt"
