#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): run the same command on every worker. JAX finds
# the other hosts itself; each host reads its own shard of the data.
#
#   launch/tpu_vm.sh my-tpu us-central2-b configs/lenet5_mnist.py gs://bucket/workdirs/lenet5
#
# The workdir should be a GCS path or a shared filesystem; datasets must be prepared as
# ArrayRecord in a data_dir every worker can read (--config.dataset.data_dir=gs://...).
#
# Preemption: a maintenance event or a spot/preemptible reclaim sends SIGTERM; the workers
# agree on a step, save it and exit with code 75 (PREEMPTED_EXIT_CODE). This script then
# waits until the TPU is READY again and reruns the command (up to RESTARTS times, default
# 10), which resumes from that checkpoint. A reclaimed spot VM is not restarted by Google
# Cloud: recreate it (or use a queued resource, which is recreated for you) and the wait
# below picks it up; with a workdir on local disk the checkpoints go with the VM, so use
# gs:// or a shared filesystem.
set -euo pipefail
tpu=${1:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]}
zone=${2:?}
config=${3:?}
workdir=${4:?}
shift 4
restarts=${RESTARTS:-10}
repo=$(git rev-parse --show-toplevel)
while true; do
  until [ "$(gcloud compute tpus tpu-vm describe "$tpu" --zone="$zone" --format='value(state)' \
            2>/dev/null)" = READY ]; do
    echo "waiting for $tpu to be READY..." >&2
    sleep 60
  done
  gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/cnnrnn
  set +e
  gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
    set -e; cd ~/cnnrnn
    [ -d .venv ] || (python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]')
    .venv/bin/python -m cnnrnn.main --multiprocess --config=$config --workdir=$workdir $*"
  status=$?
  set -e
  # 75: saved and stopped; 255: ssh lost the VM (reclaimed before the exit code came back).
  if { [ "$status" -eq 75 ] || [ "$status" -eq 255 ]; } && [ "$restarts" -gt 0 ]; then
    restarts=$((restarts - 1))
    echo "preempted (exit $status): resuming, $restarts restarts left" >&2
    continue
  fi
  exit "$status"
done
