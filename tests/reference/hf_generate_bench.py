"""The peer side of scripts/bench_generate.sh: HF transformers `generate` on the folder host saved,
(scripts/bench_generate.sh) or on a random model's folder (scripts/bench_generate_cuda.sh), with the
same prompts and settings (`num_return_sequences=n`, all prompts in one batch, as a user of
transformers samples n answers per prompt). Prints one JSON line per repeat.
Usage: hf_generate_bench.py FOLDER PROMPTS N MAX_NEW REPEATS TEMPERATURE TOP_P DTYPE [DEVICE] [FORMAT]
DEVICE: cpu (default) or cuda. FORMAT: chat (default: ChatML user turns, SmolLM2's pad and end
token, id 2) or plain (the question alone, as bench_generate.rhai with chat=false; pad and end
tokens from the model's config.json)."""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

folder = sys.argv[1]
prompts_n, n, max_new, repeats = (int(a) for a in sys.argv[2:6])
temperature, top_p = float(sys.argv[6]), float(sys.argv[7])
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[sys.argv[8]]
device = sys.argv[9] if len(sys.argv) > 9 else "cpu"
chat = (sys.argv[10] if len(sys.argv) > 10 else "chat") == "chat"
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "How do I sort a list in Python?",
             "Give me three tips for sleeping better.", "Explain photosynthesis to a child.", "What is 17 times 23?",
             "Name a famous painting.", "Why is the sky blue?"]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
if os.path.exists(os.path.join(folder, "tokenizer_config.json")):
    tok = AutoTokenizer.from_pretrained(folder)
else:  # a random model's folder holds tokenizer.json alone
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
tok.padding_side = "left"
eos = 2 if chat else model.config.eos_token_id
pad = 2 if chat else model.config.pad_token_id
tok.pad_token_id = pad
# The same prompts as scripts/bench_generate.rhai (ChatML or plain, distinct by their number).
questions = [f"{QUESTIONS[i % len(QUESTIONS)]} ({i})" for i in range(prompts_n)]
prompts = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in questions] if chat else questions
enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
kw = dict(do_sample=temperature > 0, temperature=temperature if temperature > 0 else None, top_p=top_p, top_k=0,
          pad_token_id=pad, eos_token_id=eos, num_return_sequences=n)


def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()


with torch.no_grad():
    model.generate(**{k: v[:1] for k, v in enc.items()}, max_new_tokens=4, **kw)  # warm-up
    for r in range(repeats):
        torch.manual_seed(r)
        sync()
        t0 = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=max_new, **kw)
        sync()
        secs = time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:]
        # New tokens up to and including the first EOS (the rest is padding).
        tokens = 0
        for row in new.tolist():
            tokens += (row.index(eos) + 1) if eos in row else len(row)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0
        print(json.dumps({"repeat": r, "seconds": secs, "samples": len(new), "new_tokens": tokens, "tokens_per_s": tokens / secs, "peak_gpu_mib": peak}), flush=True)
