#!/usr/bin/env bash
# Activation checkpointing on CPU: peak resident memory and seconds per step of SFT on the
# default policy (SmolLM2-135M, f32) without and with `checkpoint: true`, each in its own process
# (VmHWM is per process), with the same examples and seed, so the losses must agree.
# Usage: scripts/bench_checkpoint.sh [BATCH] [TOKENS] [STEPS] [LORA=false]
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dualign_build
dualign_assets
dualign_env
batch="${1:-8}"; tokens="${2:-512}"; steps="${3:-2}"; lora="${4:-false}"
out="$(mktemp -d)"
for c in false true; do
  "$DUALIGN_ROOT/target/release/host" run "$DUALIGN_ROOT/scripts/bench_checkpoint.rhai" --out "$out/$c" \
    --set checkpoint="$c" --set batch="$batch" --set tokens="$tokens" --set steps="$steps" --set lora="$lora" > /dev/null 2> "$out/$c.err" \
    || { cat "$out/$c.err"; exit 1; }
done
"$DUALIGN_PYTHON" - "$out" <<'PY'
import json, sys
d = sys.argv[1]
rows = {c: [json.loads(l) for l in open(f"{d}/{c}/metrics.jsonl") if '"peak_mib"' in l][-1] for c in ("false", "true")}
a, b = rows["false"], rows["true"]
print(f"SFT, SmolLM2-135M f32, {'LoRA' if a['lora'] else 'full fine-tuning'}, batch {a['batch']} x {a['tokens']} tokens, {a['steps']} steps")
for name, r in (("plain", a), ("checkpointed", b)):
    print(f"  {name:13s} peak {r['peak_mib']:8.0f} MiB (before training {r['peak_mib_before_training']:6.0f}), {r['seconds_per_step']:6.2f} s/step, loss {r['loss']:.6f}")
grow_a, grow_b = a["peak_mib"] - a["peak_mib_before_training"], b["peak_mib"] - b["peak_mib_before_training"]
print(f"  training's growth of the peak: {grow_a:.0f} -> {grow_b:.0f} MiB ({grow_b / max(grow_a, 1):.2f}x); time {b['seconds_per_step'] / a['seconds_per_step']:.2f}x; |loss difference| {abs(a['loss'] - b['loss']):.2e}")
PY
