#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): run the same command on every worker. JAX finds
# the other hosts itself; each host reads its own shard of the data.
#
#   launch/tpu_vm.sh my-tpu us-central2-b configs/lenet5_mnist.py gs://bucket/workdirs/lenet5
#
# The workdir should be a GCS path or a shared filesystem; datasets must be prepared as
# ArrayRecord in a data_dir every worker can read (--config.dataset.data_dir=gs://...).
set -euo pipefail
tpu=${1:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]}
zone=${2:?}
config=${3:?}
workdir=${4:?}
shift 4
repo=$(git rev-parse --show-toplevel)
gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/cnnrnn
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e; cd ~/cnnrnn
  [ -d .venv ] || (python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]')
  .venv/bin/python -m cnnrnn.main --multiprocess --config=$config --workdir=$workdir $*"
