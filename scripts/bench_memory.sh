#!/usr/bin/env bash
# Activation memory per token of full-size decoder layers, measured, and what that lets fit on one
# 80 GB card: random Llama checkpoints of Llama-2-7B's layer shape (hidden 4096, MLP 11008, 32
# heads, vocabulary 32000) and TinyLlama-1.1B's (2048, 5632, 32 heads / 4 KV heads), built by
# transformers from a config (no download) with 2 and 4 decoder layers, bf16. One SFT step with
# LoRA (rank 8 on every projection: gradients and optimizer state are a few MB) per process, with
# and without activation checkpointing, at 256 and 512 tokens; the growth of the process's peak
# memory during the step, compared between 2 and 4 layers, gives the activation memory of one
# layer per token (what the other costs are does not matter: they cancel), and between 256 and 512
# tokens checks that it is linear in the length (no T² term: SDPA's fused causal kernels).
# Usage: scripts/bench_memory.sh            (about 10 minutes on the 2-core CPU; needs ~8 GB)
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Every allocation above 64 KiB its own mapping, returned to the OS when freed: the peak of the
# resident memory then follows the live tensors instead of what malloc keeps for reuse.
export MALLOC_MMAP_THRESHOLD_=65536 MALLOC_ARENA_MAX=2
dualign_build
dualign_env
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
DUALIGN_ROOT="$DUALIGN_ROOT" "$DUALIGN_PYTHON" - "$out" <<'PY'
import os, sys, torch
sys.path.insert(0, os.path.join(os.environ["DUALIGN_ROOT"], "tests/reference"))
from hf_models import byte_tokenizer
from transformers import AutoModelForCausalLM, LlamaConfig
shapes = {"llama2_7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32),
          "tinyllama_1b": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4)}
torch.manual_seed(0)
for name, shape in shapes.items():
    for layers in (2, 4):
        cfg = LlamaConfig(vocab_size=32000, num_hidden_layers=layers, max_position_embeddings=4096, tie_word_embeddings=False, **shape)
        d = os.path.join(sys.argv[1], f"{name}_{layers}")
        AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(d)
        byte_tokenizer().save(os.path.join(d, "tokenizer.json"))
PY
run() { # shape layers tokens checkpoint
  "$DUALIGN_ROOT/target/release/host" run "$DUALIGN_ROOT/scripts/bench_checkpoint.rhai" --out "$out/run_$1_$2_$3_$4" \
    --set model="$out/$1_$2" --set dtype=bf16 --set lora=true --set batch=1 --set tokens="$3" --set steps=1 --set checkpoint="$4" \
    > /dev/null 2> "$out/err" || { cat "$out/err"; exit 1; }
}
for c in false true; do
  for t in 256 512; do run llama2_7b 2 $t $c; run llama2_7b 4 $t $c; done
  run tinyllama_1b 2 512 $c; run tinyllama_1b 4 512 $c
done
DUALIGN_ROOT="$DUALIGN_ROOT" "$DUALIGN_PYTHON" - "$out" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
def growth(shape, layers, tokens, ckpt):
    rows = [json.loads(l) for l in open(f"{d}/run_{shape}_{layers}_{tokens}_{ckpt}/metrics.jsonl") if '"peak_mib"' in l]
    r = rows[-1]
    return (r["peak_mib"] - r["peak_mib_before_training"]) * 2**20
per = {}
for shape, tokens in (("llama2_7b", 256), ("llama2_7b", 512), ("tinyllama_1b", 512)):
    for ckpt in ("false", "true"):
        a = (growth(shape, 4, tokens, ckpt) - growth(shape, 2, tokens, ckpt)) / (2 * tokens)
        per[(shape, tokens, ckpt)] = a
        print(f"{shape:13s} {tokens:4d} tokens, checkpointing {ckpt:5s}: {a / 1024:7.1f} KiB per token per layer "
              f"(step's peak growth: 2 layers {growth(shape, 2, tokens, ckpt) / 2**20:7.0f} MiB, 4 layers {growth(shape, 4, tokens, ckpt) / 2**20:7.0f} MiB)")
# What fits on one 80 GB card (80e9 bytes; 4 GiB kept back for the CUDA context, cuBLAS
# workspaces and the allocator's slack): weights in bf16; LoRA rank 8 on every projection with
# f32 adapters (weights, gradients, flat gradient, AdamW's two moments: 20 bytes per adapter
# parameter); full fine-tuning with bf16 weights and gradients, host's f32 flat gradient and f32
# moments (16 bytes per parameter). Activations per token: layers × the measured per-layer size at
# 512 tokens + the measured rest (LM head, loss, and with checkpointing one layer's recomputation).
models = {"llama2_7b": ("Llama-2-7B", 32, 4096, 11008, 32, 32, 32000), "tinyllama_1b": ("TinyLlama-1.1B", 22, 2048, 5632, 32, 4, 32000)}
budget = 80e9 - 4 * 2**30
print()
print("| model | training | checkpointing | activations per token | tokens per step | 512 | 1024 | 2048 | 4096 |")
print("|---|---|---|---|---|---|---|---|---|")
for shape, (name, layers, h, inter, heads, kv, vocab) in models.items():
    hd = h // heads
    layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter + 2 * h
    params = 2 * vocab * h + layers * layer + h
    adapters = layers * 8 * (2 * (h + heads * hd) + 2 * (h + kv * hd) + 2 * (h + inter) + (inter + h))
    for training, state in (("LoRA r=8", 2 * params + 20 * adapters), ("full", 16 * params)):
        for ckpt in ("false", "true"):
            a = per[(shape, 512, ckpt)]
            rest = (growth(shape, 2, 512, ckpt) - 2 * 512 * a) / 512
            tok = layers * a + rest
            room = budget - state
            fit = int(room // tok) if room > 0 else 0
            cells = " | ".join(str(fit // t) if fit else "—" for t in (512, 1024, 2048, 4096))
            note = f"{fit:,}" if room > 0 else f"does not fit ({state / 1e9:.0f} GB of weights and optimizer state)"
            print(f"| {name} ({params / 1e9:.2f}B) | {training} | {'yes' if ckpt == 'true' else 'no'} | {tok / 2**20:.2f} MiB | {note} | {cells} |")
print()
print("Cells: sequences of that many tokens per step (batch size); DPO needs two per pair (chosen and rejected).")
PY
