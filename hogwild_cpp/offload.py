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
    """An estimate of the KV cache's size (every layer, K and V, n_ctx cells) of a loaded model, or None."""
    import llama_cpp.llama_cpp as ll

    def meta(key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = ll.llama_model_meta_val_str(model.ptr, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    try:
        n_head = ll.llama_model_n_head(model.ptr)
        k_len = int(meta(f"{meta('general.architecture')}.attention.key_length")
                    or ll.llama_model_n_embd(model.ptr) // max(n_head, 1))
        v_len = int(meta(f"{meta('general.architecture')}.attention.value_length") or k_len)
        return _kv_bytes(n_ctx, ll.llama_model_n_layer(model.ptr), ll.llama_model_n_head_kv(model.ptr), k_len, v_len,
                         type_k, type_v)
    except Exception:  # an estimate: never a reason to fail
        return None


def _kv_bytes(n_ctx: int, n_layer: int, n_head_kv: int, k_len: int, v_len: int, type_k: str, type_v: str) -> int:
    return int(n_ctx * n_layer * n_head_kv * (k_len * _KV_ELEMENT[type_k] + v_len * _KV_ELEMENT[type_v]))


def fit_gpu_layers(path, n_ctx: int = 0, type_k: str = "f16", type_v: str = "f16") -> int:
    """-ngl auto: the layers of the model at `path` that fit in the GPUs' free memory, with a KV cache of
    n_ctx cells (0: the model's trained context, at most 8192, as a run's default); 0 without a GPU."""
    from . import native

    if not native.gpu_offload_supported():
        return 0
    free = native.gpu_free_memory()
    if free <= 0:
        return 0
    meta = gguf_metadata(path, lambda m: all(f"{m.get('general.architecture')}.{k}" in m for k in _SHAPE_KEYS))
    arch = meta.get("general.architecture")
    get = lambda key, default=0: meta.get(f"{arch}.{key}", default)  # noqa: E731
    n_layer, n_head = int(get("block_count")), max(int(get("attention.head_count", 1)), 1)
    n_head_kv = get("attention.head_count_kv", n_head)
    n_head_kv = max(n_head_kv) if isinstance(n_head_kv, list) else n_head_kv  # per layer in some models
    k_len = int(get("attention.key_length", int(get("embedding_length")) // n_head))
    kv = _kv_bytes(n_ctx or min(int(get("context_length", 8192)), 8192), n_layer, n_head_kv, k_len,
                   int(get("attention.value_length", k_len)), type_k, type_v)
    return layers_that_fit(os.path.getsize(path), n_layer, kv, free)


# the keys fit_gpu_layers reads (after "<arch>."), so that reading the metadata can stop once it has them
_SHAPE_KEYS = ("block_count", "context_length", "embedding_length", "attention.head_count", "attention.head_count_kv")

# GGUF value types (gguf.h: enum gguf_type) -> struct format; 8 is a string, 9 an array
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_metadata(path, enough=lambda meta: False) -> dict:
    """A GGUF file's key-value metadata, read in order until `enough(meta)` (the model's shape comes before
    its vocabulary, so a fit does not read the tokens). BadInput for a file that is not GGUF.
    Not gguf.GGUFReader: it parses every field and tensor first, 3 s for SmolLM2 and 13 s for Gemma 3 270M
    on the 2-core machine while a bench ran (this: under a millisecond), on every run's start."""
    import struct

    from .errors import BadInput

    def read(fmt: str, n: int = 1):
        size = struct.calcsize(fmt) * n
        values = struct.unpack(f"<{n}{fmt}", f.read(size))
        return values[0] if n == 1 else list(values)

    def string() -> str:
        return f.read(read("Q")).decode("utf-8", errors="replace")

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            item, n = read("I"), read("Q")
            return [string() for _ in range(n)] if item == 8 else read(_SCALAR[item], n) if n else []
        return read(_SCALAR[kind])

    meta: dict = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF" or read("I") < 2:
            raise BadInput(f"{path} is not a GGUF file (version 2 or later)")
        read("Q")  # the number of tensors
        n_kv = read("Q")
        for _ in range(n_kv):
            key = string()
            meta[key] = value(read("I"))
            if enough(meta):
                break
    return meta
