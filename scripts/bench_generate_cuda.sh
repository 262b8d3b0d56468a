#!/usr/bin/env bash
# On-policy sampling on a GPU (issue 13's GPU item), on a machine with CUDA and a Python that holds
# torch 2.11 and transformers, with the release binary built elsewhere (target/release/host): the
# dual step's shape (32 prompts x 8 samples, 48 new tokens, temperature 1, top-p 0.9) on a random
# Qwen2.5-0.5B-sized model (tests/reference/random_hf_model.py) in bf16, host's sampler against HF
# transformers `generate(num_return_sequences=8)` on the same card, weights and prompts, in the
# same run. A random model's end token is one of 151,936, so nearly every sample runs to 48 tokens
# on both sides (HF's count is exact; host's counts each sample's re-encoded text, capped at 48).
# Usage: scripts/bench_generate_cuda.sh OUT_DIR [REPEATS]   (DEVICE=cpu PRESET=tiny-qwen DTYPE=f32
# for a CPU rehearsal)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$1"; repeats="${2:-3}"; mkdir -p "$out"
py="${PYTHON:-python3}"
preset="${PRESET:-qwen2.5-0.5b}"; device="${DEVICE:-cuda}"; dtype="${DTYPE:-bf16}"
prompts=32; n=8; max_new=48; temperature=1.0; top_p=0.9
torchlib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torchlib:${LD_LIBRARY_PATH:-}"
host="$root/target/release/host"
cd "$root"
[ -f "$out/model/config.json" ] || "$py" tests/reference/random_hf_model.py "$out/model" "$preset" 1 8 8 > "$out/model.json" 2> "$out/model.err"
"$host" run scripts/bench_generate.rhai --device "$device" --out "$out/host-run" --set model="$out/model" --set chat=false \
  --set dtype="$dtype" --set prompts=$prompts --set n=$n --set max_new_tokens=$max_new --set repeats="$repeats" \
  > "$out/host.log" 2>&1 || { echo "host's sampling run failed:"; tail -20 "$out/host.log"; exit 1; }
HF_HUB_OFFLINE=1 "$py" tests/reference/hf_generate_bench.py "$out/model" $prompts $n $max_new "$repeats" $temperature $top_p \
  "$dtype" "$device" plain > "$out/hf.jsonl" 2> "$out/hf.err" || { echo "HF generate failed:"; tail -20 "$out/hf.err"; exit 1; }
"$py" - "$out" "$preset" "$device" "$dtype" <<'PY'
import json, statistics, sys
d, preset, device, dtype = sys.argv[1:5]
ours = [json.loads(l) for l in open(f"{d}/host-run/metrics.jsonl") if '"repeat"' in l]
hf = [json.loads(l) for l in open(f"{d}/hf.jsonl")]
name = "?"
if device.startswith("cuda"):
    import torch
    name = torch.cuda.get_device_name(0)
print(f"sampling, {preset} {dtype} on {device} ({name}): 32 prompts x 8 samples, 48 new tokens, temperature 1, top-p 0.9")
h = statistics.median(r["tokens_per_s"] for r in ours)
p = statistics.median(r["tokens_per_s"] for r in hf)
each = lambda rows: ", ".join("%.0f" % r["tokens_per_s"] for r in rows)
print(f"host          {h:9.0f} new tokens/s (median of {len(ours)}: {each(ours)}); peak memory {max(r.get('peak_memory_mib', 0) for r in ours):.0f} MiB")
print(f"transformers  {p:9.0f} new tokens/s (median of {len(hf)}: {each(hf)}); peak GPU memory {max(r.get('peak_gpu_mib', 0) for r in hf):.0f} MiB")
print(f"ratio host/transformers: {h / p:.2f}x; new tokens per repeat: host {ours[0]['new_tokens']}, transformers {hf[0]['new_tokens']}")
PY
