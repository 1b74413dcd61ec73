#!/usr/bin/env bash
# Runs N cooperating processes on this machine (one JAX distributed job), e.g. to exercise
# multi-host code paths on a laptop: each process gets its own CPU devices, reads its own
# shard of the data, and the gloo backend carries the collectives.
#
#   launch/local_multiprocess.sh 2 --config=configs/quickstart.py --workdir=/tmp/qs_mp
#
# Set DEVICES_PER_PROCESS (default 1) to give each process several fake CPU devices.
# SIGTERM/SIGINT to this script go to every process: they agree on a step, save it and
# exit with code 75 (cnnrnn.train.preemption.PREEMPTED_EXIT_CODE), which this script
# returns. With RESTARTS=K it starts them again after such an exit, up to K times.
set -euo pipefail
n=${1:?usage: $0 NUM_PROCESSES [cnnrnn.main flags...]}
shift
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
restarts=${RESTARTS:-0}
stopping=0
pids=()
forward() { stopping=1; kill -"$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT
while true; do
  port=${PORT:-$((20000 + RANDOM % 20000))}
  pids=()
  for ((i = 0; i < n; i++)); do
    python -m cnnrnn.main --coordinator_address="localhost:${port}" --num_processes="$n" \
      --process_id="$i" "$@" &
    pids+=($!)
  done
  status=0
  for pid in "${pids[@]}"; do
    # `wait` returns early when a trapped signal arrives: wait until the process is gone,
    # then once more for its status (bash keeps the statuses of its background jobs).
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
    set +e; wait "$pid"; s=$?; set -e
    [ "$s" -ne 0 ] && status=$s
  done
  if [ "$status" -eq 75 ] && [ "$stopping" -eq 0 ] && [ "$restarts" -gt 0 ]; then
    restarts=$((restarts - 1))
    echo "preempted (exit 75): restarting, $restarts restarts left" >&2
    continue
  fi
  exit "$status"
done
