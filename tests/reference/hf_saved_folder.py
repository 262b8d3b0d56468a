"""Checks in HF transformers that a folder `host` saved works as the checkpoint it came from:
the tokenizer's special tokens and size, `apply_chat_template` (single-turn, multi-turn, with a
system message) and batched greedy `generate` with left padding give what they give on the
original. The original is a GGUF that transformers loads itself (`gguf_file=`), so both sides hold
the same dequantised weights.

Usage: python hf_saved_folder.py GGUF_FILE SAVED_DIR OUT_DIR
Writes OUT_DIR/result.json with what was compared; exits non-zero at the first difference.
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is the capital of France?"}],
    "multi": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
              {"role": "user", "content": "Name a prime number."}],
    "system": [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Sky colour?"}],
}


def main(gguf, saved, out):
    os.makedirs(out, exist_ok=True)
    d, f = os.path.split(gguf)
    orig = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok = AutoTokenizer.from_pretrained(saved)
    result = {}
    for name in ["bos_token", "eos_token", "pad_token"]:
        a, b = getattr(orig, name), getattr(tok, name)
        assert a == b, f"{name}: original {a!r}, saved {b!r}"
        result[name] = b
    assert len(tok) == len(orig), f"saved tokenizer has {len(tok)} tokens, original {len(orig)}"
    result["tokens"] = len(tok)
    for name, conv in CONVERSATIONS.items():
        a = orig.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        b = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert a == b, f"{name}: chat template renders {b!r}, original {a!r}"
        assert orig(a, add_special_tokens=False)["input_ids"] == tok(b, add_special_tokens=False)["input_ids"], name
        result[f"chat_{name}"] = b
    prompts = [orig.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS.values()]
    outputs = []
    for source, t, kwargs in [("original", orig, {"gguf_file": f}), ("saved", tok, {})]:
        model = AutoModelForCausalLM.from_pretrained(d if source == "original" else saved, dtype=torch.float32, **kwargs).eval()
        t.padding_side = "left"
        batch = t(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**batch, max_new_tokens=8, do_sample=False)
        outputs.append(gen[:, batch["input_ids"].shape[1]:].tolist())
    assert outputs[0] == outputs[1], f"greedy tokens differ: original {outputs[0]}, saved {outputs[1]}"
    result["greedy"] = outputs[1]
    result["greedy_text"] = tok.batch_decode(outputs[1], skip_special_tokens=True)
    with open(os.path.join(out, "result.json"), "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
