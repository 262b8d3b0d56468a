#!/usr/bin/env bash
# The GPU checks of distributed runs, on a machine with one or more CUDA cards and a Python that
# holds torch 2.11 (its torchrun; transformers too for step 3), with the release binary built
# elsewhere (target/release/host, built with the NCCL headers: `host --version` says "gloo, nccl"):
#   1. NCCL with a world of one on cuda:0: torchrun --nproc-per-node=1 runs
#      tests/distributed_job.rhai (sampling, log-probs, a reference table, a score head, SFT, DPO;
#      every collective on CUDA tensors, the gradient sums included, goes over NCCL) against the
#      same job in a plain process on cuda:0: the same samples, losses within 1e-4.
#   2. Two Gloo ranks on CUDA tensors on one card (NCCL refuses two ranks on one GPU):
#      `host run --nproc 2 --device cuda --dist-backend gloo` of the same job against the plain
#      CUDA run, as tests/distributed.rs checks on the CPU.
#   3. The cost of the gradient all-reduce: DPO throughput of a random Qwen2.5-0.5B-sized model
#      (bf16, scripts/bench_dpo.rhai) under torchrun with one process (NCCL) against a plain
#      process; the difference per step is the all-reduce of the flat gradient buffer.
# Usage: scripts/bench_dist_cuda.sh OUT_DIR   (DEVICE=cpu PRESET=tiny-qwen for a CPU rehearsal:
# Gloo everywhere, a small model in step 3)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$1"; mkdir -p "$out"
py="${PYTHON:-python3}"
device="${DEVICE:-cuda}"; preset="${PRESET:-qwen2.5-0.5b}"
torchlib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torchlib:${LD_LIBRARY_PATH:-}"
torchrun="$(dirname "$py")/torchrun"; [ -x "$torchrun" ] || torchrun="$py -m torch.distributed.run"
host="$root/target/release/host"
cd "$root"
"$host" --version
job=tests/distributed_job.rhai
# Each run with its own cache, so features and reference log-probs are computed, not read back.
run() { local name="$1"; shift; DUALIGN_CACHE="$out/$name.cache" "$@" > "$out/$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$out/$name.log"; exit 1; }; }
compare() {
  "$py" - "$out/$1" "$out/$2" "$3" <<'PY'
import json, sys
a, b, label = sys.argv[1], sys.argv[2], sys.argv[3]
rows = lambda d: {r["phase"]: r for r in map(json.loads, open(f"{d}/metrics.jsonl")) if r.get("phase") in ("sampled", "scored", "trained")}
ra, rb = rows(a), rows(b)
same = all(ra["sampled"][k] == rb["sampled"][k] for k in ("samples", "first", "last", "letters_a"))
same = same and open(f"{a}/samples.jsonl").read() == open(f"{b}/samples.jsonl").read()
diffs = {f"{p}.{k}": abs(ra[p][k] - rb[p][k]) for p, ks in (("sampled", ["logprob_sum"]), ("scored", ["score_margin_sum"]), ("trained", ["sft_loss", "dpo_loss"])) for k in ks}
ok = same and diffs["trained.sft_loss"] <= 1e-4 and diffs["trained.dpo_loss"] <= 1e-4
print(f"{label}: samples identical: {same}; |differences| " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()) + f" -> {'PASS' if ok else 'FAIL'}")
PY
}
echo "== 1. NCCL, world of one, $device"
run plain "$host" run "$job" --device "$device" --out "$out/plain"
run nccl1 $torchrun --standalone --nproc-per-node=1 --no-python "$host" run "$job" --device "$device" --out "$out/nccl1"
compare plain nccl1 "torchrun world 1 (NCCL for CUDA tensors) vs plain"
echo "== 2. two Gloo ranks on CUDA tensors, one card"
run gloo2 "$host" run --nproc 2 --device "$device" --dist-backend gloo "$job" --out "$out/gloo2"
compare plain gloo2 "two Gloo ranks on $device vs plain"
echo "== 3. DPO of a random $preset-sized model with the gradient all-reduce (NCCL on CUDA, world 1) vs without"
if "$py" tests/reference/random_hf_model.py "$out/model" "$preset" 64 128 384 > "$out/model.json" 2> "$out/model.err"; then
  dpo=(scripts/bench_dpo.rhai --device "$device" --set model="$out/model" --set dtype=bf16 --set data="$out/model/pairs.jsonl"
       --set chat=false --set pairs=64 --set batch=8 --set max_len=512 --set lr=1e-5 --set online=false)
  run dpo-plain "$host" run "${dpo[@]}" --out "$out/dpo-plain"
  run dpo-nccl1 $torchrun --standalone --nproc-per-node=1 --no-python "$host" run "${dpo[@]}" --out "$out/dpo-nccl1"
  "$py" - "$out" <<'PY'
import json, sys
d = sys.argv[1]
hit = lambda n: next(r for r in map(json.loads, open(f"{d}/{n}/metrics.jsonl")) if r.get("mode") == "cache_hit")
m = json.load(open(f"{d}/model.json"))
a, b = hit("dpo-plain"), hit("dpo-nccl1")
per_step = (b["seconds"] - a["seconds"]) / a["steps"]
print(f"DPO (bf16, batch 8): plain {a['tokens_per_s']:.0f} tokens/s, with the NCCL gradient all-reduce {b['tokens_per_s']:.0f} tokens/s "
      f"({b['tokens_per_s'] / a['tokens_per_s']:.3f}x); about {1e3 * per_step:.1f} ms per step for {m['parameters'] / 1e6:.0f}M f32 gradients "
      f"({4 * m['parameters'] / 2**20:.0f} MiB); losses {a['loss']:.6f} vs {b['loss']:.6f}")
PY
else
  echo "step 3 skipped: tests/reference/random_hf_model.py failed (transformers missing?): $(tail -1 "$out/model.err")"
fi
