"""`-ngl auto`: how many layers of a model fit in the GPUs' free memory, with the KV cache of its context.

llama.cpp fits a model to free memory in its `common` library (common_fit_params), which is C++ and not
part of the C API we use, so this is an estimate in its spirit: each layer takes its share of the file
(the output layer counts as one more, as with -ngl) and its share of the KV cache, after a reserve for
compute buffers. On a build without GPU offload, auto is 0.
"""

from __future__ import annotations

import ctypes
import os

# what the compute buffers and the CUDA context may take: held back from the free memory
RESERVE_BYTES = 512 << 20
RESERVE_SHARE = 0.1

# bytes per element of each KV cache type (q8_0: 34 bytes a block of 32; q4_0: 18)
_KV_ELEMENT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def layers_that_fit(model_bytes: int, n_layer: int, kv_bytes: int, free: int) -> int:
    """Of a model's n_layer + 1 layers (its blocks and the output layer), how many fit in `free` bytes."""
    per_layer = model_bytes / (n_layer + 1) + kv_bytes / max(n_layer, 1)
    usable = free * (1 - RESERVE_SHARE) - RESERVE_BYTES
    return max(0, min(n_layer + 1, int(usable // per_layer)))


def kv_cache_bytes(model, n_ctx: int, type_k: str = "f16", type_v: str = "f16") -> int | None:
    """An estimate of the KV cache's size (every layer, K and V, n_ctx cells), or None if unknown."""
    import llama_cpp.llama_cpp as ll

    def meta(key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = ll.llama_model_meta_val_str(model.ptr, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    try:
        n_layer, n_embd = ll.llama_model_n_layer(model.ptr), ll.llama_model_n_embd(model.ptr)
        n_head, n_head_kv = ll.llama_model_n_head(model.ptr), ll.llama_model_n_head_kv(model.ptr)
        arch = meta("general.architecture") or ""
        k_len = int(meta(f"{arch}.attention.key_length") or n_embd // max(n_head, 1))
        v_len = int(meta(f"{arch}.attention.value_length") or k_len)
        return int(n_ctx * n_layer * n_head_kv * (k_len * _KV_ELEMENT[type_k] + v_len * _KV_ELEMENT[type_v]))
    except Exception:  # an estimate: never a reason to fail
        return None


def fit_gpu_layers(path, n_ctx: int = 0, type_k: str = "f16", type_v: str = "f16") -> int:
    """-ngl auto: the layers of the model at `path` that fit in the GPUs' free memory, with a KV cache of
    n_ctx cells (0: the model's trained context, at most 8192, as a run's default); 0 without a GPU."""
    import llama_cpp.llama_cpp as ll

    from . import native

    if not native.gpu_offload_supported():
        return 0
    free = native.gpu_free_memory()
    if free <= 0:
        return 0
    shape = native.Model(path, vocab_only=True)  # the hyperparameters, no weights
    try:
        n_layer = ll.llama_model_n_layer(shape.ptr)
        n_ctx = n_ctx or min(shape.n_ctx_train, 8192)
        kv = kv_cache_bytes(shape, n_ctx, type_k, type_v) or 0
    finally:
        shape.close()
    return layers_that_fit(os.path.getsize(path), n_layer, kv, free)

