#!/usr/bin/env bash
# Sampling throughput, host vs HF transformers generate, same model (SmolLM2-135M-Instruct,
# dequantised to f32), prompts, batch, max_new_tokens, temperature 1 and top-p 0.9, same torch.
# Usage: scripts/bench_generate.sh [BATCH] [MAX_NEW_TOKENS] [REPEATS] [DTYPE: f32|bf16]
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dualign_build
dualign_assets
dualign_test_packages
dualign_env
batch="${1:-8}"; max_new="${2:-64}"; repeats="${3:-3}"; dtype="${4:-f32}"
out="$(mktemp -d)"
# The f32 run saves the dequantised weights as an HF folder for the peer.
"$DUALIGN_ROOT/target/release/host" run "$DUALIGN_ROOT/scripts/bench_generate.rhai" --out "$out/save" \
  --set batch=1 --set max_new_tokens=1 --set repeats=1 > /dev/null
"$DUALIGN_ROOT/target/release/host" run "$DUALIGN_ROOT/scripts/bench_generate.rhai" --out "$out/run" \
  --set batch="$batch" --set max_new_tokens="$max_new" --set repeats="$repeats" --set dtype="$dtype" > "$out/host.txt"
HF_HUB_OFFLINE=1 "$DUALIGN_PYTHON" "$DUALIGN_ROOT/tests/reference/hf_generate_bench.py" "$out/save/hf" "$batch" "$max_new" "$repeats" 1.0 "$dtype" > "$out/hf.jsonl"
"$DUALIGN_PYTHON" - "$out/run/metrics.jsonl" "$out/hf.jsonl" <<'PY'
import json, statistics, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
hf = [json.loads(l) for l in open(sys.argv[2])]
m_ours = statistics.median(r["tokens_per_s"] for r in ours)
m_hf = statistics.median(r["tokens_per_s"] for r in hf)
print(f"host:         median {m_ours:8.1f} new tokens/s  ({[round(r['tokens_per_s'], 1) for r in ours]})")
print(f"transformers: median {m_hf:8.1f} new tokens/s  ({[round(r['tokens_per_s'], 1) for r in hf]})")
print(f"ratio host / transformers: {m_ours / m_hf:.2f}x")
PY
rm -rf "$out"
