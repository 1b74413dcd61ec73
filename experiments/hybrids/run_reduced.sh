#!/bin/bash
# The reduced runs of experiments/hybrids/README.md, one after the other on one CPU core.
# Usage (from the repository root): experiments/hybrids/run_reduced.sh [RUNS_DIR] [CORE]
set -u
RUNS=${1:-workdirs/hybrids}
CORE=${2:-0}
MNIST=${MNIST_DIR:-../shared/datasets/mnist}
PY=${PYTHON:-python}
mkdir -p "$RUNS"
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
# 10 frames at 8 pixels a frame on a 64x64 canvas: the digit's range is 36 pixels, so a clip
# is exactly one bounce period (9 steps of 8 = 72 = 2 x 36): the clip's frames, as an
# unordered set, are the same for a direction and its reverse, so a model that ignores
# their order can tell at most the path's orientation (50%; README, "single frame").
VIDEO=(--config.dataset.num_frames=10 --config.dataset.size=64 --config.dataset.speed=8
       --config.dataset.num_train=3000 --config.dataset.num_test=1000 --config.num_epochs=3
       --config.eval_every_steps=70 --config.log_every_steps=10)
# The leak at the configs' 3 pixels a frame (10 frames): the single-frame model only.
run mm_single_frame_direction_speed3 configs/moving_mnist_video.py:single_frame,direction \
  "${VIDEO[@]}" --config.dataset.speed=3
CAPTIONS=(--config.dataset.num_train=20000 --config.dataset.num_test=1000
          --config.num_train_steps=800 --config.eval_every_steps=200 --config.log_every_steps=50)
for label in direction identity; do
  for v in single_frame lstm bilstm; do
    run "mm_${v}_${label}" configs/moving_mnist_video.py:$v,$label "${VIDEO[@]}"
  done
done
for v in attention no_attention; do
  run "captions_$v" configs/mnist_captions.py:$v "${CAPTIONS[@]}"
done
for v in attention no_attention; do  # The same checkpoints, decoded with a beam of 4.
  rm -rf "$RUNS/captions_${v}_beam4"
  cp -r "$RUNS/captions_$v" "$RUNS/captions_${v}_beam4"
  run "captions_${v}_beam4" configs/mnist_captions.py:$v "${CAPTIONS[@]}" \
    --config.task.beam_size=4 --allow_change=task.beam_size
done
echo "$(date -u +%T) all done" >> "$RUNS/log.txt"
