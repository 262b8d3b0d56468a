#!/usr/bin/env bash
# DPO training throughput, host vs TRL's DPOTrainer (trl 1.16, transformers 5.24, the same torch),
# on SmolLM2-135M-Instruct (full fine-tuning), the same pairs from the shipped data set, batch
# size, max length, beta 0.1 and learning rate. Both sides with and without precomputed reference
# log-probs, and the same work: f32 and no activation recomputation on both sides (TRL with
# bf16=False, gradient_checkpointing=False), and the same malloc settings (host's mallopt, given
# to TRL's Python as GLIBC_TUNABLES). host shares each pair's prompt between its two responses
# (an extra line shows it without). TRL_DEFAULTS=1 adds TRL's own defaults (bf16 autocast,
# gradient checkpointing, glibc's malloc defaults) as extra lines, which is not the same work.
# Usage: [TRL_DEFAULTS=1] scripts/bench_dpo.sh [PAIRS] [BATCH] [MAX_LEN]
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dualign_build
dualign_assets
dualign_test_packages
dualign_env
if [ ! -f "$DUALIGN_VENV/.bench-packages" ]; then
  "$DUALIGN_VENV/bin/pip" install --quiet "trl==1.16.0" && touch "$DUALIGN_VENV/.bench-packages"
fi
pairs="${1:-64}"; batch="${2:-8}"; max_len="${3:-256}"
out="$(mktemp -d)"
"$DUALIGN_ROOT/target/release/host" run "$DUALIGN_ROOT/scripts/bench_dpo.rhai" --out "$out/run" \
  --set pairs="$pairs" --set batch="$batch" --set max_len="$max_len" > /dev/null 2> "$out/host.err" || { cat "$out/host.err"; exit 1; }
settings="like"; [ "${TRL_DEFAULTS:-0}" = 1 ] && settings="like defaults"
# host keeps freed memory in the process (src/main.rs keep_freed_memory: mallopt); TRL gets the
# same glibc settings for the same work, and glibc's defaults with its own defaults.
same_malloc="glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=2147483647"
for s in $settings; do
  tunables="${GLIBC_TUNABLES:-$same_malloc}"; [ "$s" = defaults ] && tunables="${GLIBC_TUNABLES:-}"
  for pre in 0 1; do
    GLIBC_TUNABLES="$tunables" HF_HUB_OFFLINE=1 "$DUALIGN_PYTHON" "$DUALIGN_ROOT/tests/reference/trl_dpo_bench.py" "$out/run/hf" "$out/run/pairs.jsonl" "$batch" "$max_len" "$pre" "$s" 2> "$out/trl.err" | tail -1 > "$out/trl-$s-$pre.json" \
      || { tail -5 "$out/trl.err"; exit 1; }
  done
done
"$DUALIGN_PYTHON" - "$out" <<'PY'
import json, os, sys
d = sys.argv[1]
ours = {r["mode"]: r for r in map(json.loads, open(f"{d}/run/metrics.jsonl")) if "mode" in r}
def line(name, a, b):
    print(f"{name:34s} host {a['pairs_per_s']:6.2f} pairs/s ({a['seconds']:6.1f} s)   TRL {b['pairs_per_s']:6.2f} pairs/s ({b['seconds']:6.1f} s)   ratio {a['pairs_per_s'] / b['pairs_per_s']:.2f}x")
for s in ("like", "defaults"):
    if not os.path.exists(f"{d}/trl-{s}-0.json"):
        continue
    trl = {p: json.load(open(f"{d}/trl-{s}-{p}.json")) for p in (0, 1)}
    print(f"host: f32, no recomputation, each pair's prompt shared by its two responses (share_prompt) unless said.  TRL: bf16={trl[0]['bf16']}, gradient_checkpointing={trl[0]['gradient_checkpointing']}"
          + ("  (the same work; both with host's malloc settings)" if s == "like" else "  (TRL's defaults, glibc's malloc defaults: not the same work)"))
    line("reference every step", ours["online"], trl[0])
    line("precomputed reference (first run)", ours["cache_miss"], trl[1])
    line("cached reference (later runs)", ours["cache_hit"], trl[1])
    if "cache_hit_unshared" in ours:
        line("  the same, prompt not shared", ours["cache_hit_unshared"], trl[1])
    # host's loss is the mean over the epoch's pairs; TRL logs each step's mean (logging_steps=1),
    # so the mean of its steps is the same statistic (the same pairs, batched in another order).
    print(f"loss, mean over the epoch: host {ours['cache_hit']['loss']:.4f}, TRL {trl[1]['mean_loss']:.4f} (the same pairs, batched in another order)")
    if s == "like":
        # The first run's floor: its model FLOPs (counted as the host's MFU counts them: training
        # 6 and the reference pass 2 per linear weight per token, the LM head where a response
        # token is predicted; attention left out) at the matmul peak measured in the same run.
        m = ours["cache_miss"]
        floor, target = m["model_flops"] / m["matmul_peak"], trl[1]["seconds"] / 2
        print(f"first run: {m['model_flops'] / 1e12:.2f} TFLOP of model FLOPs at the measured matmul peak {m['matmul_peak'] / 1e9:.0f} GFLOP/s: at least {floor:.1f} s;"
              f" host {m['seconds']:.1f} s (MFU {floor / m['seconds']:.2f}); 2x TRL ({target:.1f} s) needs MFU {floor / target:.2f}; TRL's {trl[1]['seconds']:.1f} s is MFU {floor / trl[1]['seconds']:.2f} of these FLOPs")
print(f"host tokens/s (cached): {ours['cache_hit']['tokens_per_s']:.0f}; host peak RSS {ours['cache_hit'].get('peak_rss_mib', 0):.0f} MiB")
PY
rm -rf "$out"
