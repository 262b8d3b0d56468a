"""Compares the host's CPU and CUDA parity runs (scripts/cuda_parity.rhai, written by
scripts/bench_cuda.sh into OUT_DIR/parity-{tiny,model}-{cpu,DEVICE}) and the CUDA run of the random
HF model against HF transformers on the same device and token ids. Prints one line per check.

Usage: python compare_parity.py OUT_DIR DEVICE
"""
import json
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

out, device = sys.argv[1], sys.argv[2]


def rows(name, dev):
    return [json.loads(l) for l in open(f"{out}/parity-{name}-{dev}/parity.jsonl")]


def final(name, dev):
    return [json.loads(l) for l in open(f"{out}/parity-{name}-{dev}/metrics.jsonl") if "dpo_loss" in l][-1]


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-6)


for name in ("tiny", "model"):
    cpu, dev = rows(name, "cpu"), rows(name, device)
    lp = max(rel(a["logprob"], b["logprob"]) for a, b in zip(dev, cpu))
    lp_abs = max(abs(a["logprob"] - b["logprob"]) for a, b in zip(dev, cpu))
    after = max(rel(a["logprob_after_dpo"], b["logprob_after_dpo"]) for a, b in zip(dev, cpu))
    greedy = sum(a["greedy_ids"] == b["greedy_ids"] for a, b in zip(dev, cpu))
    loss_c, loss_d = final(name, "cpu")["dpo_loss"], final(name, device)["dpo_loss"]
    print(f"{name:5s} {device} vs cpu: response log-prob max rel diff {lp:.2e} (abs {lp_abs:.2e}); after {final(name, device)['dpo_steps']} DPO steps "
          f"{after:.2e}; DPO loss {loss_d:.6f} vs {loss_c:.6f}; greedy continuations identical {greedy}/{len(cpu)}")

model_dir = f"{out}/model"
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
eos = hf.config.eos_token_id
worst, same = 0.0, 0
host = rows("model", device)
with torch.no_grad():
    for r in host:
        p, y = r["prompt_ids"], r["response_ids"]
        ids = torch.tensor([p + y], device=device)
        lp = hf(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        ours = lp[len(p) - 1:].gather(-1, ids[0, len(p):, None]).sum().item()
        worst = max(worst, rel(r["logprob"], ours))
        g = hf.generate(torch.tensor([p], device=device), max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=256)[0, len(p):].tolist()
        if eos in g:
            g = g[:g.index(eos)]
        same += tok.encode(tok.decode(g, skip_special_tokens=False), add_special_tokens=False).ids == r["greedy_ids"]
print(f"model {device} host vs HF transformers {device}: response log-prob max rel diff {worst:.2e}; greedy continuations identical {same}/{len(host)}")
