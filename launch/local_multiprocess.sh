#!/usr/bin/env bash
# Runs N cooperating processes on this machine (one JAX distributed job), e.g. to exercise
# multi-host code paths on a laptop: each process gets its own CPU devices, reads its own
# shard of the data, and the gloo backend carries the collectives.
#
#   launch/local_multiprocess.sh 2 --config=configs/quickstart.py --workdir=/tmp/qs_mp
#
# Set DEVICES_PER_PROCESS (default 1) to give each process several fake CPU devices.
set -euo pipefail
n=${1:?usage: $0 NUM_PROCESSES [cnnrnn.main flags...]}
shift
port=${PORT:-$((20000 + RANDOM % 20000))}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
pids=()
for ((i = 0; i < n; i++)); do
  python -m cnnrnn.main --coordinator_address="localhost:${port}" --num_processes="$n" \
    --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
