"""The peer side of scripts/bench_dpo.sh: TRL's DPOTrainer on the same model (the folder host
saved), pairs, batch size, max length, beta and learning rate. Prints one JSON line with the
training wall time, pairs per second and the losses (first step, last step, mean over the
epoch's steps).

SETTINGS `like` is the same work as host's step: f32, no activation recomputation
(`bf16=False, gradient_checkpointing=False`); `defaults` keeps DPOConfig's own precision and
recomputation defaults (bf16 autocast and gradient checkpointing in TRL 1.16).

Usage: python trl_dpo_bench.py MODEL_DIR PAIRS_JSONL BATCH MAX_LEN PRECOMPUTE(0|1) [SETTINGS: like|defaults]
"""
import json
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

model_dir, pairs_path, batch, max_len, precompute = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
settings = sys.argv[6] if len(sys.argv) > 6 else "like"
like = {"like": {"bf16": False, "gradient_checkpointing": False}, "defaults": {}}[settings]
rows = [json.loads(l) for l in open(pairs_path)]
ds = Dataset.from_list(rows)
tok = AutoTokenizer.from_pretrained(model_dir)
tok.pad_token = "<|im_end|>"
tok.eos_token = "<|im_end|>"
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
args = DPOConfig(output_dir="/tmp/trl-bench-out", beta=0.1, per_device_train_batch_size=batch, max_length=max_len,
                 learning_rate=5e-4, num_train_epochs=1, logging_steps=1, report_to="none", save_strategy="no",
                 use_cpu=True, precompute_ref_log_probs=precompute, lr_scheduler_type="constant",
                 dataloader_num_workers=0, disable_tqdm=True, seed=0, **like)
trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
t0 = time.perf_counter()
out = trainer.train()
secs = time.perf_counter() - t0
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"settings": settings, "bf16": bool(args.bf16), "gradient_checkpointing": bool(args.gradient_checkpointing), "seconds": secs, "pairs": len(rows), "pairs_per_s": len(rows) / secs, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                  "mean_loss": sum(losses) / len(losses) if losses else None}))
