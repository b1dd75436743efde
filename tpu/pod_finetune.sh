#!/usr/bin/env bash
# Fine-tune on a Cloud TPU VM pod slice: the same `flaxzoo finetune --distributed` on every worker;
# jax.distributed.initialize() finds the coordinator, process count and ids from the TPU metadata.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b tpu/pod_finetune.sh --model resnet50 --data gs-fuse/train \
#       --val-data gs-fuse/val --epochs 10 --batch-size 1024 --checkpoint-dir /mnt/ckpt/resnet50
#
# Environment: TPU_NAME, ZONE (required); PROJECT (default: gcloud's); FLAXZOO_VENV (a virtualenv on
# every worker to activate, default: none); FLAXZOO_HOME / KERAS_HOME (weight caches, on every worker);
# FLAXZOO_INSTALL=1 to `pip install flaxzoo` on every worker first. Data and --checkpoint-dir must be
# visible to every worker under the same path (a shared mount such as gcsfuse or Filestore).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
project_args=()
[ -n "${PROJECT:-}" ] && project_args=(--project "$PROJECT")

args=$(printf ' %q' "$@")
remote="set -e;"
[ -n "${FLAXZOO_VENV:-}" ] && remote+=" source $(printf '%q' "$FLAXZOO_VENV")/bin/activate;"
[ "${FLAXZOO_INSTALL:-0}" = 1 ] && remote+=" pip install -q flaxzoo;"
for var in FLAXZOO_HOME KERAS_HOME FLAXZOO_BASE_URL; do
  [ -n "${!var:-}" ] && remote+=" export $var=$(printf '%q' "${!var}");"
done
remote+=" flaxzoo finetune --distributed$args"

exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_args[@]}" --worker=all --command "$remote"
