"""Writes a random-weight HF checkpoint from a config (no download) and synthetic DPO pairs whose
token counts are exact, for scripts/bench_cuda.sh.

Usage: python random_hf_model.py OUT_DIR PRESET PAIRS PROMPT_LEN RESPONSE_LEN

PRESET: qwen2.5-0.5b (the published Qwen2.5-0.5B shapes: 24 layers, hidden 896, 14 heads, 2 KV
heads, MLP 4864, vocabulary 151936, tied embeddings, q/k/v biases) or tiny-qwen (2 layers, for a
CPU rehearsal). Weights use transformers' own initialisation (normal, std 0.02) under seed 0.
The tokenizer is byte-level (one token per ASCII byte; ids above 256 decode to <tN>), so the pairs written to
OUT_DIR/pairs.jsonl (lowercase words) have exactly PROMPT_LEN and RESPONSE_LEN tokens.
"""
import json
import os
import random
import sys

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

PRESETS = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True),
    "tiny-qwen": dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True),
}


def byte_tokenizer(vocab_size):
    """hf_models.py's byte-level tokenizer (one token per byte, <pad> = 256), with the ids above it
    named <tN> so that every id the random model can produce decodes to a distinct string."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<pad>"] = 256
    for i in range(257, vocab_size):
        vocab[f"<t{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def text(rng, n):
    words = []
    while sum(len(w) + 1 for w in words) < n + 1:
        words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))))
    return " ".join(words)[:n]


def main(out, preset, pairs, prompt_len, response_len):
    torch.manual_seed(0)
    cfg = Qwen2Config(**PRESETS[preset], eos_token_id=299, pad_token_id=256, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    byte_tokenizer(cfg.vocab_size).save(os.path.join(out, "tokenizer.json"))
    rng = random.Random(0)
    with open(os.path.join(out, "pairs.jsonl"), "w") as f:
        for _ in range(pairs):
            row = {"prompt": text(rng, prompt_len), "chosen": text(rng, response_len), "rejected": text(rng, response_len)}
            f.write(json.dumps(row) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"preset": preset, "parameters": n, "embedding": model.get_input_embeddings().weight.numel()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
