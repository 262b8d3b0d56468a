"""Adapters written by PEFT itself, for tests/models.rs: tiny random base models (configs from
hf_models.py), LoRA adapters attached by `peft.get_peft_model`, their weights randomised (a fresh
adapter has B = 0 and would compute the base model), saved with `save_pretrained`, and the logits
PEFT's model computes with them.

Usage: python peft_adapters.py OUT_DIR

OUT_DIR/<base>/            the base model as `save_pretrained` writes it, plus tokenizer.json
OUT_DIR/<case>/adapter/    adapter_config.json, adapter_model.safetensors (PEFT's own files)
OUT_DIR/<case>/expected.safetensors   ids [2, 7], logits [2, 7, V] of the PEFT model
OUT_DIR/versions.json      the torch, transformers and peft versions
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
import transformers
import peft
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from hf_models import CASES, byte_tokenizer

ADAPTERS = {
    # A list of module names (PEFT's suffix rule), plain LoRA scaling alpha / r.
    "llama_list": ("llama_gqa_untied_rope3", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
    # A regular expression over full module names (second layer only), rsLoRA scaling alpha / sqrt(r).
    "llama_regex_rslora": ("llama_gqa_untied_rope3", dict(r=4, lora_alpha=6, use_rslora=True,
                                                          target_modules=r".*\.layers\.1\..*(k_proj|up_proj)")),
    # Every linear layer but some, on a model with q/k/v biases.
    "qwen2_all_linear": ("qwen2_tied", dict(r=2, lora_alpha=4, target_modules="all-linear", exclude_modules=["o_proj"])),
    # GPT-2's Conv1D layers (PEFT stores their adapters as for nn.Linear).
    # Phi-3's fused projections adapted as one module each, as PEFT targets them.
    "phi3_fused": ("phi3_longrope", dict(r=4, lora_alpha=8, target_modules=["qkv_proj", "gate_up_proj"])),
    "gpt2_conv1d": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
}


def base_model(name):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CASES[name](), dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def main(out):
    os.makedirs(out, exist_ok=True)
    for base in sorted({b for b, _ in ADAPTERS.values()}):
        d = os.path.join(out, base)
        base_model(base).save_pretrained(d)
        byte_tokenizer().save(os.path.join(d, "tokenizer.json"))
    for case, (base, cfg) in ADAPTERS.items():
        model = get_peft_model(base_model(base), LoraConfig(**cfg)).eval()
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn_like(p) * 0.2)
        d = os.path.join(out, case)
        model.save_pretrained(os.path.join(d, "adapter"))
        ids = torch.randint(0, 256, (2, 7))
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float().contiguous()
        save_file({"ids": ids, "logits": logits}, os.path.join(d, "expected.safetensors"))
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}, f)


if __name__ == "__main__":
    main(sys.argv[1])
