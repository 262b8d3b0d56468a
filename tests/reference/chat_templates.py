"""What transformers' `apply_chat_template` renders for real chat templates, for tests/models.rs.

Usage: python chat_templates.py FIXTURES_DIR SMOLLM2_GGUF OUT_DIR
Reads the templates in FIXTURES_DIR (tests/fixtures/chat_templates, from trl 1.16 and
llama-cpp-python 0.3.16) and SmolLM2's
from its GGUF; renders three conversations (single-turn, multi-turn, with a system message) with
`add_generation_prompt=True` through a tokenizer that carries each family's special tokens; writes
OUT_DIR/expected.json: {"conversations": {name: messages}, "families": {family: {"template",
"bos_token", "eos_token", "renders": {conversation: text or {"error": message}}}}}.
"""
import json
import os
import sys

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_models import byte_tokenizer

CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is the capital of France?"}],
    "multi": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
              {"role": "user", "content": "Name a prime number."}],
    "system": [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "  Sky colour?  "}],
}

# family -> (fixture file or None for the GGUF, bos token, eos token), the tokens of those checkpoints.
FAMILIES = {
    "qwen2_5": ("qwen2_5.jinja", None, "<|im_end|>"),
    "llama3_1": ("llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "gemma2": ("gemma2.jinja", "<bos>", "<eos>"),
    "phi3": ("phi3.jinja", "<s>", "<|endoftext|>"),
    "mistral": ("mistral.jinja", "<s>", "</s>"),
    "smollm2": (None, "<|im_start|>", "<|im_end|>"),
}


def main(fixtures, gguf, out):
    os.makedirs(out, exist_ok=True)
    result = {}
    for family, (fixture, bos, eos) in FAMILIES.items():
        if fixture is None:
            d, f = os.path.split(gguf)
            template = AutoTokenizer.from_pretrained(d, gguf_file=f).chat_template
        else:
            with open(os.path.join(fixtures, fixture)) as fh:
                template = fh.read()
        tok = PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer(), bos_token=bos, eos_token=eos)
        renders = {}
        for name, conv in CONVERSATIONS.items():
            try:
                renders[name] = tok.apply_chat_template(conv, chat_template=template, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # the template's own raise_exception, e.g. Gemma on a system message
                renders[name] = {"error": str(e)}
        result[family] = {"template": template, "bos_token": bos, "eos_token": eos, "renders": renders}
    with open(os.path.join(out, "expected.json"), "w") as fh:
        json.dump({"conversations": CONVERSATIONS, "families": result}, fh, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
