"""Writes a small GGUF file with one tensor of each type the loader supports, quantised by gguf-py
(llama.cpp's own Python package), and the values gguf-py dequantises them to. gguf-py has no
quantiser for the K-quants: their blocks are random bytes with finite random f16 scales (every bit
pattern of the packed quants and scales is a valid block), 3 rows of 2 blocks.

Usage: python gguf_types.py OUT_DIR  ->  OUT_DIR/types.gguf, OUT_DIR/types_expected.safetensors
"""
import os
import sys

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGUFWriter, GGMLQuantizationType, quants
from safetensors.torch import save_file

TYPES = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
    "q5_0": GGMLQuantizationType.Q5_0,
    "q5_1": GGMLQuantizationType.Q5_1,
}

# K-quants: (type, byte offsets of the f16 fields d / dmin inside a block), from ggml-common.h.
K_TYPES = {
    "q2_k": (GGMLQuantizationType.Q2_K, [80, 82]),
    "q3_k": (GGMLQuantizationType.Q3_K, [108]),
    "q4_k": (GGMLQuantizationType.Q4_K, [0, 2]),
    "q5_k": (GGMLQuantizationType.Q5_K, [0, 2]),
    "q6_k": (GGMLQuantizationType.Q6_K, [208]),
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
    for name, (ty, halves) in K_TYPES.items():
        block, size = GGML_QUANT_SIZES[ty]
        rows, blocks = 3, 2
        q = rng.integers(0, 256, size=(rows * blocks, size), dtype=np.uint8)
        for at in halves:
            q[:, at:at + 2] = (rng.standard_normal((rows * blocks, 1)) * 0.05).astype(np.float16).view(np.uint8)
        q = q.reshape(rows, blocks * size)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=ty)
        expected[name] = torch.from_numpy(np.ascontiguousarray(quants.dequantize(q, ty).reshape(rows, blocks * block).astype(np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(out, "types_expected.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
