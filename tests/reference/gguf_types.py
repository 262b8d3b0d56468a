"""Writes a small GGUF file with one tensor of each type the loader supports, quantised by gguf-py
(llama.cpp's own Python package), and the values gguf-py dequantises them to.

Usage: python gguf_types.py OUT_DIR  ->  OUT_DIR/types.gguf, OUT_DIR/types_expected.safetensors
"""
import os
import sys

import numpy as np
import torch
from gguf import GGUFWriter, GGMLQuantizationType, quants
from safetensors.torch import save_file

TYPES = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
}


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    w = GGUFWriter(os.path.join(out, "types.gguf"), "llama")
    w.add_string("test.note", "one tensor per type")
    expected = {}
    for name, ty in TYPES.items():
        x = rng.standard_normal((3, 64)).astype(np.float32)
        q = quants.quantize(x, ty)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=ty)
        expected[name] = torch.from_numpy(np.ascontiguousarray(quants.dequantize(q, ty).reshape(3, 64).astype(np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(out, "types_expected.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
