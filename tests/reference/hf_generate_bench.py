"""The peer side of scripts/bench_generate.sh: HF transformers `generate` on the folder host saved,
with the same prompts and settings (`num_return_sequences=n`, all prompts in one batch, as a user
of transformers samples n answers per prompt). Prints one JSON line per repeat.
Usage: hf_generate_bench.py FOLDER PROMPTS N MAX_NEW REPEATS TEMPERATURE TOP_P DTYPE"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = sys.argv[1]
prompts_n, n, max_new, repeats = (int(a) for a in sys.argv[2:6])
temperature, top_p = float(sys.argv[6]), float(sys.argv[7])
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[sys.argv[8]]
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "How do I sort a list in Python?",
             "Give me three tips for sleeping better.", "Explain photosynthesis to a child.", "What is 17 times 23?",
             "Name a famous painting.", "Why is the sky blue?"]
tok = AutoTokenizer.from_pretrained(folder)
tok.padding_side = "left"
tok.pad_token_id = 2
model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
# The same chat prompts as scripts/bench_generate.rhai (ChatML, distinct by their number).
prompts = [f"<|im_start|>user\n{QUESTIONS[i % len(QUESTIONS)]} ({i})<|im_end|>\n<|im_start|>assistant\n" for i in range(prompts_n)]
enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
kw = dict(do_sample=temperature > 0, temperature=temperature if temperature > 0 else None, top_p=top_p, top_k=0,
          pad_token_id=2, eos_token_id=2, num_return_sequences=n)
with torch.no_grad():
    model.generate(**{k: v[:1] for k, v in enc.items()}, max_new_tokens=4, **kw)  # warm-up
    for r in range(repeats):
        torch.manual_seed(r)
        t0 = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=max_new, **kw)
        secs = time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:]
        # New tokens up to and including the first EOS (the rest is padding).
        tokens = 0
        for row in new.tolist():
            tokens += (row.index(2) + 1) if 2 in row else len(row)
        print(json.dumps({"repeat": r, "seconds": secs, "samples": len(new), "new_tokens": tokens, "tokens_per_s": tokens / secs}), flush=True)
