"""Does the safety proxy's failure depend on the layer it reads? (README, "Tried on seed 1")

For every 3rd hidden layer of the reference (HF hidden_states; the last entry, after the final
norm, is what the job's proxies read), trains the job's Bradley-Terry head on the answer-mean of
that layer for the first `scorer_pairs` pairs (standardised features, AdamW lr 0.05, 300 full-batch
steps, 10% held out, as src/train/scorer.rs), then scores a run's dual-step answers to harmful
prompts and prints: held-out pair accuracy, the AUC of the score for the judge's refusals, the
mean score per iterate (in sd of the scores) and the judge's refusals per iterate.

    python examples/layer_probe.py OUT [scorer_pairs=400]    (OUT: examples/layer_probe.rhai's run directory)
"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

out = sys.argv[1]
n_pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 400
MAX_LEN = 160  # the job's max_len
torch.manual_seed(0)
tok = PreTrainedTokenizerFast(tokenizer_file=f"{out}/hf/tokenizer.json")
model = AutoModelForCausalLM.from_pretrained(f"{out}/hf", dtype=torch.float32).eval()
pairs = [json.loads(l) for l in open(f"{out}/pairs.jsonl")]
kind = {p["prompt"]: p["kind"] for p in pairs}
pairs = pairs[:n_pairs]
samples = [json.loads(l) for l in open(f"{out}/samples.jsonl")]


def features(items):
    """[layers + 1, N, H]: each layer's hidden states averaged over the response tokens."""
    out = []
    for s in range(0, len(items), 16):
        ids, spans = [], []
        for p, r in items[s:s + 16]:
            pi, ri = tok(p, add_special_tokens=False)["input_ids"], tok(r, add_special_tokens=False)["input_ids"]
            x = (pi + ri)[:MAX_LEN]
            a, b = (len(pi), len(x)) if len(x) > len(pi) else (len(x) - 1, len(x))
            ids.append(x)
            spans.append((a, b))
        t = max(map(len, ids))
        x = torch.zeros(len(ids), t, dtype=torch.long)
        m = torch.zeros(len(ids), t, dtype=torch.long)
        w = torch.zeros(len(ids), t)
        for i, (row, (a, b)) in enumerate(zip(ids, spans)):
            x[i, :len(row)], m[i, :len(row)], w[i, a:b] = torch.tensor(row), 1, 1.0 / (b - a)
        with torch.no_grad():
            hs = model(input_ids=x, attention_mask=m, output_hidden_states=True).hidden_states
        out.append(torch.stack([(h * w[:, :, None]).sum(1) for h in hs]))
    return torch.cat(out, 1)


def auc(score, pos):
    a, b = score[pos], score[~pos]
    return ((a[:, None] > b[None, :]).float().mean() + 0.5 * (a[:, None] == b[None, :]).float().mean()).item()


f0 = features([(p["prompt"], p["r0"]) for p in pairs])
f1 = features([(p["prompt"], p["r1"]) for p in pairs])
fs = features([(s["prompt"], s["response"]) for s in samples])
safer = torch.tensor([p["safer"] for p in pairs])[:, None]
harmful = torch.tensor([kind.get(s["prompt"]) == "harmful" for s in samples])
refused = torch.tensor([s["label"] != "full_compliance" for s in samples])
it = torch.tensor([s["it"] for s in samples])
T = int(it.max()) + 1
order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))
n_eval = round(0.1 * len(pairs))
ev, tr = order[:n_eval], order[n_eval:]
print(f"{len(pairs)} pairs ({n_eval} held out); {int(harmful.sum())} dual-step answers to harmful prompts; "
      f"judge refusals per iterate: {[int((refused & harmful & (it == t)).sum()) for t in range(T)]}")
layers = fs.shape[0]
for layer in sorted(set(range(0, layers, 3)) | {layers - 1}):
    fc = torch.where(safer == 0, f0[layer], f1[layer])
    fr = torch.where(safer == 0, f1[layer], f0[layer])
    both = torch.cat([fc[tr], fr[tr]])
    mu, sd = both.mean(0), both.std(0).clamp_min(1e-6)
    zc, zr = (fc - mu) / sd, (fr - mu) / sd
    w = torch.zeros(fc.shape[1], 1, requires_grad=True)
    opt = torch.optim.AdamW([w], lr=0.05, weight_decay=0.0)
    for _ in range(300):
        loss = -torch.nn.functional.logsigmoid((zc[tr] - zr[tr]) @ w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = w.detach()
    acc = ((zc[ev] - zr[ev]) @ w > 0).float().mean().item()
    s = (((fs[layer] - mu) / sd) @ w).squeeze(1)
    s = s / s[harmful].std()
    means = " ".join(f"{s[harmful & (it == t)].mean().item():+.2f}" for t in range(T))
    name = f"{layer:2d}" + (" (final norm, the job's)" if layer == layers - 1 else "")
    print(f"layer {name}: held-out pair accuracy {acc:.3f}, AUC for refusals {auc(s[harmful], refused[harmful]):.3f}, mean score per iterate {means}")
