#!/usr/bin/env bash
# Every GPU check in one command, for a session lent a GPU for a few minutes: the release binary
# built on the CPU machine (target/release/host, carried), the GPU machine's own Python with torch
# 2.11 and transformers. The steps run in the order of what is most wanted, each under a time limit
# of its own, so that the figures of the first come back even if a later one runs out of time:
#   1. scripts/bench_generate_cuda.sh   sampling, the dual step's shape, host vs HF generate (issue 13)
#   2. scripts/bench_cuda.sh            CUDA parity with CPU and HF; DPO throughput and MFU vs PyTorch
#   3. scripts/bench_dist_cuda.sh       NCCL with a world of one, two Gloo ranks on CUDA tensors, the
#                                       gradient all-reduce's cost
# Each step writes its output to OUT_DIR/N-NAME.txt and its files (models, runs: gigabytes) under
# WORK_DIR/N-NAME/ (default /tmp/dualign-gpu), so that OUT_DIR holds the four text files alone.
# Usage: scripts/gpu_session.sh OUT_DIR [SECONDS_1 SECONDS_2 SECONDS_3]   (default 110 240 200: about
# nine minutes in all, inside one 10-minute device call). DEVICE=cpu PRESET=tiny-qwen DTYPE=f32
# rehearses every step on the CPU.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$1"; work="${WORK_DIR:-/tmp/dualign-gpu}"; mkdir -p "$out" "$work"
limits=("${2:-110}" "${3:-240}" "${4:-200}")
steps=(bench_generate_cuda bench_cuda bench_dist_cuda)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/0-gpu.txt" 2>&1 || echo "no nvidia-smi" > "$out/0-gpu.txt"
"$root/target/release/host" --version >> "$out/0-gpu.txt" 2>&1
status=0
for i in 0 1 2; do
  name="${steps[$i]}"; log="$out/$((i + 1))-$name.txt"
  start=$(date +%s)
  timeout --kill-after=10 "${limits[$i]}" bash "$root/scripts/$name.sh" "$work/$((i + 1))-$name" > "$log" 2>&1
  rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - start )) s (limit ${limits[$i]} s)$([ $rc = 124 ] && echo ': TIMED OUT')" | tee -a "$log"
  [ $rc = 0 ] || status=1
done
exit $status
