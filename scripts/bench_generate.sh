#!/usr/bin/env bash
# On-policy sampling benchmarks (not tests). Usage: scripts/bench_generate.sh [MODE] [REPEATS] [DTYPE]
#   dual (default): the dual step's shape: 32 prompts x 8 samples, 48 new tokens, temperature 1,
#     top-p 0.9, SmolLM2-135M-Instruct (dequantised, DTYPE f32 or bf16); host against HF transformers
#     `generate(num_return_sequences=8)` on the same weights, prompts and torch in the same run, and
#     both against the CPU's limit: 2 x parameters FLOPs per new token at the measured matmul peak.
#   scaling: the built-in tiny model, 4 prompts, 1,000 to 40,000 samples of 16 new tokens, each
#     size in its own process: time, tokens/s and peak memory, and the time ratio per size step.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dualign_build
dualign_assets
dualign_test_packages
dualign_env
mode="${1:-dual}"; repeats="${2:-3}"; dtype="${3:-f32}"
host="$DUALIGN_ROOT/target/release/host"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
case "$mode" in
dual)
  prompts=32; n=8; max_new=48
  "$host" run "$DUALIGN_ROOT/scripts/bench_generate.rhai" --out "$out/run" --set save=true --set prompts=$prompts \
    --set n=$n --set max_new_tokens=$max_new --set repeats="$repeats" --set dtype="$dtype" > /dev/null 2> "$out/host.err" \
    || { cat "$out/host.err"; exit 1; }
  HF_HUB_OFFLINE=1 "$DUALIGN_PYTHON" "$DUALIGN_ROOT/tests/reference/hf_generate_bench.py" "$out/run/hf" $prompts $n $max_new \
    "$repeats" 1.0 0.9 "$dtype" > "$out/hf.jsonl" 2> "$out/hf.err" || { cat "$out/hf.err"; exit 1; }
  "$DUALIGN_PYTHON" - "$out/run/metrics.jsonl" "$out/hf.jsonl" "$out/run/hf" "$dtype" <<'PY'
import json, math, statistics, sys, time
import torch
from safetensors import safe_open
ours = [json.loads(l) for l in open(sys.argv[1])]
hf = [json.loads(l) for l in open(sys.argv[2])]
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[sys.argv[4]]
with safe_open(f"{sys.argv[3]}/model.safetensors", "pt") as f:
    params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
# The matmul peak of this machine with this torch: the best of a few large GEMMs, by torch's
# matmul (MKL) and, in f32, by oneDNN's linear (what host's layers run; faster on AMD CPUs).
a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
kernels = [lambda: a @ b]
if dtype == torch.float32 and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
best = 0.0
for _ in range(5):
    for k in kernels:
        t0 = time.perf_counter(); k(); dt = time.perf_counter() - t0
        best = max(best, 2 * 2048 ** 3 / dt)
limit = best / (2 * params)
m_ours = statistics.median(r["tokens_per_s"] for r in ours)
m_hf = statistics.median(r["tokens_per_s"] for r in hf)
print(f"shape: 32 prompts x 8 samples, 48 new tokens, T=1, top-p 0.9, {sys.argv[4]}, {torch.get_num_threads()} threads")
print(f"host:         median {m_ours:8.1f} new tokens/s  ({[round(r['tokens_per_s'], 1) for r in ours]}; {ours[0]['new_tokens']} tokens per run)")
print(f"transformers: median {m_hf:8.1f} new tokens/s  ({[round(r['tokens_per_s'], 1) for r in hf]}; {hf[0]['new_tokens']} tokens per run)")
print(f"ratio host / transformers: {m_ours / m_hf:.2f}x")
print(f"CPU limit: {params / 1e6:.1f}M parameters, matmul peak {best / 1e9:.0f} GFLOP/s -> {limit:.0f} new tokens/s; "
      f"host at {100 * m_ours / limit:.0f}%, transformers at {100 * m_hf / limit:.0f}%")
PY
  ;;
scaling)
  : > "$out/scaling.jsonl"
  # Sizes interleaved within each repeat, so drift in the machine's speed hits every size alike.
  for r in $(seq 1 "$repeats"); do
    for per_prompt in 250 500 1000 2000 4000 8000 10000; do
      rm -rf "$out/s"
      "$host" run "$DUALIGN_ROOT/scripts/bench_generate.rhai" --out "$out/s" --set model=builtin:tiny --set chat=false \
        --set prompts=4 --set n=$per_prompt --set max_new_tokens=16 --set repeats=1 > /dev/null 2> "$out/host.err" \
        || { cat "$out/host.err"; exit 1; }
      cat "$out/s/metrics.jsonl" >> "$out/scaling.jsonl"
    done
  done
  "$DUALIGN_PYTHON" - "$out/scaling.jsonl" <<'PY'
import json, statistics, sys
rows = {}
for r in map(json.loads, open(sys.argv[1])):
    rows.setdefault(r["samples"], []).append(r)
print("| samples | seconds (median) | new tokens/s | peak memory MiB | time ratio to the previous size (sample ratio) |")
print("|---|---|---|---|---|")
prev = None
for samples in sorted(rows):
    rs = rows[samples]
    secs = statistics.median(r["seconds"] for r in rs)
    tps = statistics.median(r["tokens_per_s"] for r in rs)
    mem = max(r["peak_memory_mib"] for r in rs)
    ratio = f"{secs / prev[1]:.2f} ({samples / prev[0]:.1f})" if prev else ""
    print(f"| {samples} | {secs:.2f} | {tps:.0f} | {mem:.0f} | {ratio} |")
    prev = (samples, secs)
PY
  ;;
*) echo "bench_generate.sh: unknown mode '$mode' (dual or scaling)" >&2; exit 2 ;;
esac
