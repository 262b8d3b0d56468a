"""An independent DPO loss and gradient in plain PyTorch (full logits, log_softmax, gather), on a
tiny HF checkpoint, for tests/train.rs to compare with host's chunked, padded implementation.

Usage: python dpo_reference.py POLICY_DIR OUT_DIR
Writes OUT_DIR/reference/ (the policy with perturbed weights, saved with save_pretrained) and
OUT_DIR/expected.safetensors: the token ids of 4 pairs (prompt_i, chosen_i, rejected_i), the
mean sigmoid-DPO loss at beta 0.1 and label smoothing 0.1, and the gradients of a few weights.
"""
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

BETA, EPS = 0.1, 0.1
GRADS = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"]


def seq_logp(model, prompt, response):
    ids = torch.cat([prompt, response]).unsqueeze(0)
    logp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    # Response token k sits at position len(prompt) + k and is predicted from the position before.
    pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(response))
    return logp[pos, response].sum()


def main(policy_dir, out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(1)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    reference.save_pretrained(os.path.join(out, "reference"))
    shutil.copy(os.path.join(policy_dir, "tokenizer.json"), os.path.join(out, "reference", "tokenizer.json"))
    pairs = []
    for i in range(4):
        lp, lc, lr = 3 + i, 2 + (i * 3) % 5, 1 + (i * 2) % 4
        pairs.append((torch.randint(0, 256, (lp,)), torch.randint(0, 256, (lc,)), torch.randint(0, 256, (lr,))))
    losses = []
    for prompt, chosen, rejected in pairs:
        with torch.no_grad():
            rc, rr = seq_logp(reference, prompt, chosen), seq_logp(reference, prompt, rejected)
        pc, pr = seq_logp(policy, prompt, chosen), seq_logp(policy, prompt, rejected)
        h = (pc - pr) - (rc - rr)
        losses.append(-(1 - EPS) * F.logsigmoid(BETA * h) - EPS * F.logsigmoid(-BETA * h))
    loss = torch.stack(losses).mean()
    loss.backward()
    params = dict(policy.named_parameters())
    expected = {"loss": loss.detach().reshape(1)}
    for name in GRADS:
        expected["grad." + name] = params[name].grad.contiguous()
    for i, (p, c, r) in enumerate(pairs):
        expected[f"prompt_{i}"], expected[f"chosen_{i}"], expected[f"rejected_{i}"] = p, c, r
    save_file(expected, os.path.join(out, "expected.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
