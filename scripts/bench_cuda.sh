#!/usr/bin/env bash
# The GPU checks, run on a machine with CUDA and a Python that holds torch 2.11 and transformers,
# with the release binary built elsewhere (target/release/host):
#   1. CUDA parity with CPU: response log-probs, greedy continuations and a short DPO run of the
#      built-in tiny Llama and of a random Qwen2.5-0.5B-sized model (f32), on --device cpu and
#      --device cuda; the CUDA log-probs and greedy text also against HF transformers on CUDA.
#   2. DPO throughput and MFU (bf16, full fine-tuning, cached reference log-probs) of the host
#      against the same step written in PyTorch (tests/reference/torch_dpo_step.py), same run.
# Usage: scripts/bench_cuda.sh OUT_DIR   (PRESET=tiny-qwen DEVICE=cpu for a CPU rehearsal)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$1"; mkdir -p "$out"
py="${PYTHON:-python3}"
preset="${PRESET:-qwen2.5-0.5b}"; device="${DEVICE:-cuda}"
pairs="${PAIRS:-128}"; batches="${BATCHES:-8}"; plen=128; rlen=384; max_len=512
torchlib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torchlib:${LD_LIBRARY_PATH:-}"
host="$root/target/release/host"
cd "$root"
"$py" tests/reference/random_hf_model.py "$out/model" "$preset" "$pairs" "$plen" "$rlen" | tee "$out/model.json"
echo "== parity"
for dev in cpu "$device"; do
  for m in tiny model; do
    src=builtin:tiny; [ "$m" = model ] && src="$out/model"
    "$host" run scripts/cuda_parity.rhai --device "$dev" --out "$out/parity-$m-$dev" --set model="$src" > "$out/parity-$m-$dev.log" 2>&1 \
      || { echo "parity run $m on $dev failed:"; tail -5 "$out/parity-$m-$dev.log"; }
  done
done
"$py" tests/reference/compare_parity.py "$out" "$device" 2>"$out/compare.err" | tee "$out/parity.txt" || tail -5 "$out/compare.err"
for batch in $batches; do
echo "== DPO throughput ($preset, bf16, batch $batch, $pairs pairs of $plen + 2 x $rlen tokens)"
"$host" run scripts/bench_dpo.rhai --device "$device" --out "$out/dpo-$batch" --set model="$out/model" --set dtype=bf16 \
  --set data="$out/model/pairs.jsonl" --set chat=false --set pairs="$pairs" --set batch="$batch" --set max_len="$max_len" \
  --set lr=1e-5 --set online=false > "$out/dpo-$batch.log" 2>&1 || { tail -20 "$out/dpo-$batch.log"; exit 1; }
"$py" tests/reference/torch_dpo_step.py "$out/model" "$out/dpo-$batch/pairs.jsonl" "$batch" "$max_len" 1e-5 bf16 "$device" 2>"$out/torch.err" | tail -1 > "$out/torch-$batch.json" || { tail -20 "$out/torch.err"; exit 1; }
"$py" - "$out" "$plen" "$rlen" "$batch" <<'PY'
import json, sys
d, plen, rlen, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
m = json.load(open(f"{d}/model.json"))
cfg = json.load(open(f"{d}/model/config.json"))
ours = {r["mode"]: r for r in map(json.loads, open(f"{d}/dpo-{batch}/metrics.jsonl")) if "mode" in r}
peer = json.load(open(f"{d}/torch-{batch}.json"))
host = ours["cache_hit"]
# Training FLOPs per pair (forward + backward = 3 x forward): 6 x non-embedding parameters for
# every token of prompt+chosen and prompt+rejected, plus 6 x (vocabulary x hidden) for the LM head
# at the scored (response) positions; attention score FLOPs left out (about 3% here).
n_ne = m["parameters"] - m["embedding"]
head = cfg["vocab_size"] * cfg["hidden_size"]
flops_pair = 6 * n_ne * 2 * (plen + rlen) + 6 * head * 2 * rlen
conventional = 6 * m["parameters"] * 2 * (plen + rlen)  # LM head at every position (PaLM-style 6N)
peak = 989.4e12  # H100/H200 SXM dense bf16
tokens_pair = 2 * (plen + rlen)
for name, r in (("host", host), ("pytorch", peer)):
    pps = r["tokens_per_s"] / tokens_pair  # training loop only, on both sides
    print(f"{name:8s} {pps:8.2f} pairs/s  {pps * 2 * (plen + rlen):9.0f} tokens/s  MFU {pps * flops_pair / peak:6.1%}  (6N at every position: {pps * conventional / peak:6.1%})  last loss {r.get('loss', r.get('last_loss')):.4f}")
print(f"ratio host/pytorch: {host['tokens_per_s'] / peer['tokens_per_s']:.2f}x; host time split: forward {host['seconds_forward']:.2f} s, backward {host['seconds_backward']:.2f} s, optimizer {host['seconds_optimizer']:.2f} s of {host['seconds']:.2f} s; pytorch peak GPU memory {peer.get('peak_gpu_mib', 0):.0f} MiB")
PY
done
