"""Builds tiny random HF checkpoints from configs (no download) and records what HF transformers
computes on them, for tests/models.rs to compare against.

Usage: python hf_models.py OUT_DIR

For each case it writes OUT_DIR/<case>/ (config.json, model.safetensors, tokenizer.json, as
`save_pretrained` writes them) and OUT_DIR/<case>/expected.safetensors with:
  ids            [2, 7]   int64 input ids (no padding)
  logits         [2, 7, V] float32 logits of the causal LM
  prompts_*      the two prompts of different lengths used for batched greedy decoding
  greedy_*       the 6 greedy tokens HF generate() produces for each prompt, decoded as a batch
                 with left padding
  scores         [2] the score head's output (only for the *_score cases)
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
import transformers
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, Gemma2Config, Gemma3TextConfig,
                          GPT2Config, LlamaConfig, Phi3Config, Qwen2Config, Qwen3Config)

VOCAB = 300
PAD = 256


def byte_tokenizer():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<pad>"] = PAD
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


CASES = {
    # Grouped-query attention (4 heads, 2 KV heads), untied LM head, Llama-3 RoPE scaling.
    "llama_gqa_untied_rope3": lambda: LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_theta=500000.0, eos_token_id=VOCAB - 1, pad_token_id=PAD,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32}),
    # Qwen2: q/k/v biases, tied embeddings, plain RoPE, a sliding window of 3 on layer 1 only
    # (use_sliding_window, max_window_layers 1).
    "qwen2_tied": lambda: Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_theta=10000.0, eos_token_id=VOCAB - 1, pad_token_id=PAD, use_sliding_window=True, sliding_window=3,
        max_window_layers=1),
    # Qwen3: per-head q/k RMSNorm, head_dim 32 (not hidden / heads = 16), GQA, untied.
    "qwen3_qknorm": lambda: Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_theta=1000000.0, eos_token_id=VOCAB - 1, pad_token_id=PAD),
    # Gemma 2: (1 + w) norms, four per layer, GeGLU, scaled embeddings, query_pre_attn_scalar 24 (not
    # head_dim 16), soft caps small enough to bite (attention 2.0, logits 3.0), tied embeddings, a
    # sliding window of 4 on the even layers (inputs are 7 tokens and 5 + 6 generated).
    # HF's eager attention (its SDPA path ignores the attention soft cap).
    "gemma2_softcap": lambda: Gemma2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
        query_pre_attn_scalar=24, attn_logit_softcapping=2.0, final_logit_softcapping=3.0, sliding_window=4,
        eos_token_id=VOCAB - 1, pad_token_id=PAD, bos_token_id=VOCAB - 2),
    # Gemma 3 (text): Gemma's norms, GeGLU and scaled embeddings, (1 + w) q/k norms, no soft caps,
    # global and sliding layers (pattern 2: layers 0 and 2 slide, window 3) with their own RoPE
    # (global: theta 1e6, linear factor 2; sliding: theta 10000, unscaled), untied.
    "gemma3_local": lambda: Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6, query_pre_attn_scalar=24,
        sliding_window=3, sliding_window_pattern=2, tie_word_embeddings=False,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        eos_token_id=VOCAB - 1, pad_token_id=PAD, bos_token_id=VOCAB - 2),
    # Phi-3 (fused qkv_proj and gate_up_proj) with LongRoPE: an original context of 2 positions, so
    # every test input uses the long factors (and the attention factor sqrt(1 + ln 32 / ln 2) from
    # 64 / 2), and partial rotation (half of each 16-wide head, as Phi-4-mini rotates 3/4).
    "phi3_longrope": lambda: Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, original_max_position_embeddings=2, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "short_factor": [1.0, 1.5, 2.0, 4.0], "long_factor": [1.2, 3.0, 7.0, 20.0]},
        tie_word_embeddings=False, eos_token_id=VOCAB - 1, pad_token_id=PAD, bos_token_id=VOCAB - 2),
    # Phi-3 inside its original context (64): the short factors, full rotation, attention factor
    # sqrt(1 + ln 4 / ln 64) from 256 / 64; a sliding window of 5 on every layer.
    "phi3_short": lambda: Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, original_max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 4.0], "long_factor": [2.0] * 8},
        tie_word_embeddings=False, eos_token_id=VOCAB - 1, pad_token_id=PAD, bos_token_id=VOCAB - 2, sliding_window=5),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, eos_token_id=VOCAB - 1,
        bos_token_id=VOCAB - 1, pad_token_id=PAD),
    # Score model (LlamaForSequenceClassification, head `score`).
    "llama_score": lambda: LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False, num_labels=1,
        eos_token_id=VOCAB - 1, pad_token_id=PAD),
    # Score model (Gemma2ForSequenceClassification).
    "gemma2_score": lambda: Gemma2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, query_pre_attn_scalar=24,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, sliding_window=4, num_labels=1,
        eos_token_id=VOCAB - 1, pad_token_id=PAD, bos_token_id=VOCAB - 2),
    # Score model (Gemma3TextForSequenceClassification).
    "gemma3_score": lambda: Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, query_pre_attn_scalar=24,
        sliding_window=3, sliding_window_pattern=2, num_labels=1, eos_token_id=VOCAB - 1, pad_token_id=PAD),
    # Score model (Phi3ForSequenceClassification).
    "phi3_score": lambda: Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, original_max_position_embeddings=2,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "short_factor": [1.0, 1.5, 2.0, 4.0], "long_factor": [1.2, 3.0, 7.0, 20.0]},
        tie_word_embeddings=False, num_labels=1, eos_token_id=VOCAB - 1, pad_token_id=PAD),
    # Score model (Qwen3ForSequenceClassification).
    "qwen3_score": lambda: Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, tie_word_embeddings=False, num_labels=1,
        eos_token_id=VOCAB - 1, pad_token_id=PAD),
}


def main(out):
    torch.manual_seed(0)
    for name, make in CASES.items():
        cfg = make()
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        score = name.endswith("_score")
        cls = AutoModelForSequenceClassification if score else AutoModelForCausalLM
        extra = {"attn_implementation": "eager"} if name.startswith("gemma2") else {}
        model = cls.from_config(cfg, dtype=torch.float32, **extra).eval()
        with torch.no_grad():
            # HF's init is small (std 0.02); widen it so logits differ clearly between tokens.
            for p in model.parameters():
                if p.dim() >= 1:
                    p.add_(torch.randn_like(p) * 0.05)
        model.save_pretrained(d)
        byte_tokenizer().save(os.path.join(d, "tokenizer.json"))
        ids = torch.randint(0, 256, (2, 7))
        expected = {"ids": ids}
        with torch.no_grad():
            if score:
                expected["scores"] = model(input_ids=ids).logits[:, 0].float().contiguous()
            else:
                expected["logits"] = model(input_ids=ids).logits.float().contiguous()
                prompts = [torch.randint(0, 256, (5,)), torch.randint(0, 256, (3,))]
                batch = torch.full((2, 5), PAD)
                mask = torch.zeros((2, 5), dtype=torch.long)
                for i, p in enumerate(prompts):
                    batch[i, 5 - len(p):] = p
                    mask[i, 5 - len(p):] = 1
                gen = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                     pad_token_id=PAD, eos_token_id=VOCAB - 1)
                for i, p in enumerate(prompts):
                    expected[f"prompts_{i}"] = p
                    expected[f"greedy_{i}"] = gen[i, 5:].contiguous()
        save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(d, "expected.safetensors"))
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f)


if __name__ == "__main__":
    main(sys.argv[1])
