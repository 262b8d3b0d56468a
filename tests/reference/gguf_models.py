"""A tiny Llama in a GGUF file written the way llama.cpp's convert_hf_to_gguf.py writes a
Llama-3.1 / Llama-2 checkpoint, for tests/models.rs to compare against HF transformers:

- the weights of a random HF Llama (GQA, Llama-3 RoPE scaling), q/k rows permuted as llama.cpp
  permutes them, F32;
- the RoPE scaling as llama.cpp stores it for Llama 3.1: a `rope_freqs.weight` tensor of per-frequency
  divisors (convert_hf_to_gguf.py `LlamaModel.generate_extra_tensors`), no scaling metadata;
- a SentencePiece tokenizer (`tokenizer.ggml.model = "llama"`): <unk>, <s>, </s>, the 256 byte
  tokens <0x00>..<0xFF>, then pieces with scores (single characters and merges), as a Llama-2 or
  Mistral GGUF has it.

Usage: python gguf_models.py OUT_DIR
OUT_DIR/hf/                   the HF checkpoint (config.json, model.safetensors)
OUT_DIR/llama_spm.gguf        the GGUF
OUT_DIR/expected.safetensors  ids [2, 9], logits [2, 9, V] of the HF model
OUT_DIR/tokens.json           rows [{"text", "ids", "decoded"}]: texts, the ids HF transformers'
                              tokenizer gives for them when it loads the GGUF
                              (`AutoTokenizer.from_pretrained(..., gguf_file=...)`, its own
                              SentencePiece conversion) without BOS, and its decoding of those ids
"""
import json
import math
import os
import sys

import numpy as np
import torch
from gguf import GGUFWriter, TokenType
from safetensors.torch import save_file
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

# Single characters first (lower scores than every merge made of them), then merges in order of
# preference; a merge's pieces are both earlier in the list.
CHARS = ["▁", "e", "t", "a", "o", "i", "n", "s", "h", "r", "d", "l", "u", "c", "m", "T", "H", "é", "1", "2"]
MERGES = ["▁t", "he", "in", "er", "an", "▁a", "on", "re", "at", "en", "nd", "▁s", "▁o", "▁the", "▁i", "es",
          "or", "is", "ing", "ed", "▁c", "ou", "▁and", "▁in", "ha", "▁h", "ti", "st", "▁to", "it", "▁he",
          "ar", "▁m", "▁T", "le", "▁The", "ion", "al", "▁re", "▁é", "12", "▁1"]
VOCAB = 3 + 256 + len(CHARS) + len(MERGES)

TEXTS_FIXED = [
    "", " ", "  ", "the", "The cat", " leading space", "trailing space ", "double  space", "tab\there",
    "new\nline", "\n\n", "caf\u00e9 cr\u00e8me", "na\u00efve r\u00e9sum\u00e9", "\u65e5\u672c\u8a9e", "emoji \U0001F600!",
    "12 123 1234 2112", "3.14159", "THE HEAT IS ON", "in the heat of the sitting", "and the tone is set",
    "x" * 40, "\u00e9\u00e9\u00e9", "<s> is not a control token in text", "a\u00a0b", "mixed 12ab34 cd",
]


def texts():
    rng = np.random.default_rng(0)
    alphabet = list("etaoinshrdlucmTHE12 ") + ["\u00e9", "\n", "\t", "  ", "\u65e5", "\U0001F600", "x", "q", "Z", "9"]
    out = list(TEXTS_FIXED)
    while len(out) < 300:
        n = int(rng.integers(1, 40))
        out.append("".join(alphabet[i] for i in rng.integers(0, len(alphabet), n)))
    return out


THETA = 500000.0
ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32}


def rope_factors(dim):
    """convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors (Llama 3.1's rope_freqs)."""
    rs = ROPE_SCALING
    base = THETA
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py, LlamaModel.permute: HF's half-split q/k rows to interleaved."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def main(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_theta=THETA, bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_scaling=dict(ROPE_SCALING))
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(os.path.join(out, "hf"))

    w = GGUFWriter(os.path.join(out, "llama_spm.gguf"), "llama")
    w.add_name("tiny-llama-spm")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(THETA)
    w.add_vocab_size(VOCAB)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + CHARS + MERGES
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-1000.0 - i for i in range(len(CHARS))] + [-float(i) for i in range(len(MERGES))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256 + [TokenType.NORMAL] * (len(CHARS) + len(MERGES))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.add_tensor("rope_freqs.weight", rope_factors(head_dim))
    for i in range(cfg.num_hidden_layers):
        for hf, gg in GGUF_NAMES.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                t = permute(t, cfg.num_attention_heads, cfg.num_attention_heads)
            elif hf == "self_attn.k_proj":
                t = permute(t, cfg.num_attention_heads, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ids = torch.randint(3, VOCAB, (2, 9))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float().contiguous()
    save_file({"ids": ids, "logits": logits}, os.path.join(out, "expected.safetensors"))

    tok = AutoTokenizer.from_pretrained(out, gguf_file="llama_spm.gguf")
    rows = []
    for t in texts():
        ids = tok(t, add_special_tokens=False)["input_ids"]
        rows.append({"text": t, "ids": ids, "decoded": tok.decode(ids)})
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "with_bos": tok("the")["input_ids"], "rows": rows}, f,
                  ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main(sys.argv[1])
