#!/usr/bin/env bash
# Start one `flaxzoo finetune --distributed` process of a multi-host job by hand (no SLURM, no TPU
# metadata): run it on every host with the same coordinator and arguments and its own process id.
#
#   host 0:  FLAXZOO_COORDINATOR=10.0.0.1:12355 FLAXZOO_NUM_PROCESSES=2 FLAXZOO_PROCESS_ID=0 tpu/launch_processes.sh --model ...
#   host 1:  FLAXZOO_COORDINATOR=10.0.0.1:12355 FLAXZOO_NUM_PROCESSES=2 FLAXZOO_PROCESS_ID=1 tpu/launch_processes.sh --model ...
#
# LOCAL_PROCESSES=N starts processes FLAXZOO_PROCESS_ID .. +N-1 on this host instead (e.g. one per GPU,
# with CUDA_VISIBLE_DEVICES set per process to GPU i), and waits for all of them.
set -euo pipefail
: "${FLAXZOO_COORDINATOR:?host:port of process 0}" "${FLAXZOO_NUM_PROCESSES:?total processes}"
: "${FLAXZOO_PROCESS_ID:?this process id (the first one, with LOCAL_PROCESSES)}"
export FLAXZOO_COORDINATOR FLAXZOO_NUM_PROCESSES
n=${LOCAL_PROCESSES:-1}
if [ "$n" = 1 ]; then
  exec flaxzoo finetune --distributed "$@"
fi
pids=()
for ((i = 0; i < n; i++)); do
  FLAXZOO_PROCESS_ID=$((FLAXZOO_PROCESS_ID + i)) CUDA_VISIBLE_DEVICES=$i flaxzoo finetune --distributed "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
