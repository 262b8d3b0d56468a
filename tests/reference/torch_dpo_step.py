"""The peer side of scripts/bench_cuda.sh: the DPO step written directly in PyTorch on HF
transformers' model, as TRL's DPOTrainer does it (one forward over chosen and rejected together,
full-vocabulary logits, log-softmax in f32, sigmoid loss, reference log-probs precomputed once,
gradient clipping at 1.0, torch.optim.AdamW with fused kernels on CUDA). Same pairs, batch size,
max length, beta, learning rate and dtype as the host's run. Prints one JSON line.

Usage: python torch_dpo_step.py MODEL_DIR PAIRS_JSONL BATCH MAX_LEN LR DTYPE DEVICE
"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

model_dir, pairs_path, batch, max_len, lr, dtype, device = sys.argv[1:8]
batch, max_len, lr = int(batch), int(max_len), float(lr)
kind = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
beta = 0.1
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
rows = [json.loads(l) for l in open(pairs_path)]


def encode(row):
    p = tok.encode(row["prompt"], add_special_tokens=False).ids
    room = max(max_len - len(p), 1)
    c = tok.encode(row["chosen"], add_special_tokens=False).ids[:room]
    r = tok.encode(row["rejected"], add_special_tokens=False).ids[:room]
    return p, c, r


def collate(chunk):
    seqs, starts = [], []
    for p, c, r in chunk:
        seqs.append(p + c), starts.append(len(p))
    for p, c, r in chunk:
        seqs.append(p + r), starts.append(len(p))
    t = max(map(len, seqs))
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    attn = torch.zeros(len(seqs), t, dtype=torch.long)
    scored = torch.zeros(len(seqs), t, dtype=torch.bool)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
        scored[i, start:len(s)] = True
    tokens = sum(map(len, seqs))
    return ids.to(device), attn.to(device), scored.to(device), tokens


def sequence_logps(model, ids, attn, scored):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    lp = logits.float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (lp * scored[:, 1:]).sum(-1)


def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()


data = [encode(r) for r in rows]
batches = [collate(data[i:i + batch]) for i in range(0, len(data), batch)]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=kind, attn_implementation="sdpa").to(device)
model.config.use_cache = False
t0 = time.perf_counter()
with torch.no_grad():
    model.eval()
    ref = [sequence_logps(model, ids, attn, scored) for ids, attn, scored, _ in batches]
sync()
ref_seconds = time.perf_counter() - t0
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                        fused=device.startswith("cuda"))


def step(k):
    ids, attn, scored, _ = batches[k]
    lp = sequence_logps(model, ids, attn, scored)
    n = ids.shape[0] // 2
    logits = beta * ((lp[:n] - ref[k][:n]) - (lp[n:] - ref[k][n:]))
    loss = -F.logsigmoid(logits).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


warm = min(2, len(batches))
for k in range(warm):
    first = step(k)
sync()
torch.cuda.reset_peak_memory_stats() if device.startswith("cuda") else None
t1 = time.perf_counter()
last = None
for k in range(len(batches)):
    last = step(k)
sync()
secs = time.perf_counter() - t1
tokens = sum(b[3] for b in batches)
out = {"seconds": secs, "pairs": len(rows), "pairs_per_s": len(rows) / secs, "tokens": tokens, "tokens_per_s": tokens / secs,
       "reference_seconds": ref_seconds, "first_loss": first, "last_loss": last}
if device.startswith("cuda"):
    out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
