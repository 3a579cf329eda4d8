"""Llama-architecture GGUF files with random weights, for tests and speed benchmarks.

Tiny models (the default) are written in milliseconds and tokenize any text through
SentencePiece-style byte fallback. Large presets ("1b", "8b") skip numpy quantization and
write random quantized blocks with a small fixed scale: fast, and only good for timing.

    python -m models.gguf_gen tiny.gguf
    python -m models.gguf_gen bench-1b.gguf --preset 1b --dtype q4_0
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import gguf
import numpy as np

QTYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
FLOAT_DTYPES = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
PRESETS = {
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_head_kv=2),
    # llama-3.2-1B-like and llama-3.1-8B-like shapes
    "1b": dict(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192, n_vocab=128256,
               n_ctx_train=131072, rope_theta=500000.0),
    "8b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256,
               n_ctx_train=131072, rope_theta=500000.0),
    # Qwen2.5-32B / QwQ-32B shape (as a llama)
    "32b": dict(n_embd=5120, n_layer=64, n_head=40, n_head_kv=8, n_ff=27648, n_vocab=152064,
                n_ctx_train=32768, rope_theta=1000000.0),
}
PRESET_DTYPES = {"tiny": "f32", "1b": "q4_0", "8b": "q4_0", "32b": "q4_0"}

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPACE = "\u2581"  # SentencePiece's word-boundary mark; decodes to " "
N_BASE_VOCAB = 3 + 256 + 1  # <unk> <s> </s>, the byte tokens, SPACE
WEIGHT_STD = 0.02
CHUNK_ELEMENTS = 1 << 24  # bounds the temporary float arrays of the fast path


def vocabulary(n_vocab: int = N_BASE_VOCAB) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of a byte-fallback SentencePiece vocabulary."""
    if n_vocab < N_BASE_VOCAB:
        raise ValueError(f"n_vocab must be at least {N_BASE_VOCAB}")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    # without a SPACE token, spaces would decode as the bytes of U+2581
    tokens.append(SPACE)
    types.append(gguf.TokenType.NORMAL)
    # padding tokens only make the embedding and output matrices realistic in size
    tokens += [f"<dummy{i:06d}>" for i in range(N_BASE_VOCAB, n_vocab)]
    types += [gguf.TokenType.NORMAL] * (n_vocab - N_BASE_VOCAB)
    scores = [0.0] * n_vocab
    return tokens, scores, [int(t) for t in types]


def default_n_ff(n_embd: int) -> int:
    """Llama's 8/3 * n_embd, rounded up to a multiple of 32 (a quant block)."""
    return 32 * math.ceil(8 * n_embd / 3 / 32)


def tensor_shapes(n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab) -> dict[str, tuple[int, ...]]:
    """Numpy shapes (rows, cols) of every llama tensor, in file order."""
    head_dim = n_embd // n_head
    shapes = {"token_embd.weight": (n_vocab, n_embd)}
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes[b + "attn_norm.weight"] = (n_embd,)
        shapes[b + "attn_q.weight"] = (n_head * head_dim, n_embd)
        shapes[b + "attn_k.weight"] = (n_head_kv * head_dim, n_embd)
        shapes[b + "attn_v.weight"] = (n_head_kv * head_dim, n_embd)
        shapes[b + "attn_output.weight"] = (n_embd, n_head * head_dim)
        shapes[b + "ffn_norm.weight"] = (n_embd,)
        shapes[b + "ffn_gate.weight"] = (n_ff, n_embd)
        shapes[b + "ffn_up.weight"] = (n_ff, n_embd)
        shapes[b + "ffn_down.weight"] = (n_embd, n_ff)
    shapes["output_norm.weight"] = (n_embd,)
    shapes["output.weight"] = (n_vocab, n_embd)
    return shapes


def byte_shape(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> tuple[int, ...]:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block_size:
        raise ValueError(f"row length {shape[-1]} is not a multiple of {block_size} for {qtype.name}")
    return (*shape[:-1], shape[-1] // block_size * type_size)


def declare_tensor(writer: gguf.GGUFWriter, name: str, shape, qtype) -> None:
    if qtype in FLOAT_DTYPES:
        np_dtype = np.dtype(FLOAT_DTYPES[qtype])
        writer.add_tensor_info(name, shape, np_dtype, math.prod(shape) * np_dtype.itemsize)
    else:
        shape = byte_shape(shape, qtype)
        writer.add_tensor_info(name, shape, np.dtype(np.uint8), math.prod(shape), raw_dtype=qtype)


def normal_weights(rng: np.random.Generator, shape: tuple[int, ...], std: float = WEIGHT_STD) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)


def random_matrix(rng, shape, qtype, std: float = WEIGHT_STD) -> np.ndarray:
    """Quantized random normal weights, through gguf's reference quantizer (slow for big shapes)."""
    w = normal_weights(rng, shape, std)
    if qtype == gguf.GGMLQuantizationType.F32:
        return w
    if qtype == gguf.GGMLQuantizationType.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w, qtype)


def fast_random_matrix(rng, shape, qtype) -> np.ndarray:
    """Random data of the right layout without quantizing: for speed benchmarks only."""
    if qtype in FLOAT_DTYPES:
        out = np.empty(shape, dtype=FLOAT_DTYPES[qtype])
        flat = out.reshape(-1)
        for start in range(0, flat.size, CHUNK_ELEMENTS):
            n = min(CHUNK_ELEMENTS, flat.size - start)
            flat[start:start + n] = rng.standard_normal(n, dtype=np.float32) * WEIGHT_STD
        return out
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    out = rng.integers(0, 256, size=byte_shape(shape, qtype), dtype=np.uint8)
    blocks = out.reshape(-1, type_size)
    # every block starts with its f16 scale; pick one that keeps weights near WEIGHT_STD
    q_std = 4.6 if qtype == gguf.GGMLQuantizationType.Q4_0 else 74.0
    blocks[:, :2] = np.frombuffer(np.float16(WEIGHT_STD / q_std).tobytes(), dtype=np.uint8)
    return out


def write_llama_gguf(
    path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int | None = None,
    n_vocab: int = N_BASE_VOCAB,
    n_ctx_train: int = 2048,
    rope_theta: float = 10000.0,
    dtype: str = "f32",
    seed: int = 0,
    chat_template: str | None = None,
    fast: bool | None = None,
    weight_std: float = WEIGHT_STD,
) -> Path:
    """Write a llama GGUF with random weights; 2-D matrices in `dtype`, norms f32 (= 1).

    `fast` writes random quantized blocks instead of quantizing normal weights; by default
    it is on for models over 50M parameters.
    """
    if dtype not in QTYPES:
        raise ValueError(f"dtype must be one of {sorted(QTYPES)}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must divide by n_head and n_head by n_head_kv")
    n_ff = n_ff or default_n_ff(n_embd)
    qtype = QTYPES[dtype]
    path = Path(path)
    shapes = tensor_shapes(n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab)
    if fast is None:
        fast = sum(math.prod(s) for s in shapes.values()) > 50_000_000

    writer = gguf.GGUFWriter(path, "llama")  # writes general.architecture itself
    writer.add_name(f"random-llama-{n_embd}x{n_layer}-{dtype}")
    writer.add_file_type(FILE_TYPES[dtype])
    add_shape(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)

    add_byte_vocabulary(writer, n_vocab)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    # declare every tensor first, then stream them: only one tensor is in memory at a time
    for name, shape in shapes.items():
        declare_tensor(writer, name, shape, gguf.GGMLQuantizationType.F32 if len(shape) == 1 else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        if len(shape) == 1:
            writer.write_tensor_data(np.ones(shape, dtype=np.float32))
        else:
            writer.write_tensor_data(random_matrix(rng, shape, qtype, weight_std) if not fast
                                     else fast_random_matrix(rng, shape, qtype))
    writer.close()
    return path


def add_shape(writer: gguf.GGUFWriter, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv=None) -> None:
    """The architecture keys every generated model has (under its own architecture's prefix)."""
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    if n_head_kv is not None:
        writer.add_head_count_kv(n_head_kv)


def add_byte_vocabulary(writer: gguf.GGUFWriter, n_vocab: int = N_BASE_VOCAB) -> None:
    """The SentencePiece-style byte vocabulary every generated model uses."""
    tokens, scores, types = vocabulary(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)


def write_all(writer: gguf.GGUFWriter, tensors: dict[str, np.ndarray], path: Path) -> Path:
    for name, arr in tensors.items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_gpt2_gguf(path, *, n_embd: int = 64, n_layer: int = 1, n_head: int = 4, n_ctx_train: int = 512,
                    seed: int = 0) -> Path:
    """A tiny GPT-2 (learned absolute positions, no RoPE), f32: for tests of what hogwild refuses."""
    path, rng, n_ff = Path(path), np.random.default_rng(seed), 4 * n_embd
    writer = gguf.GGUFWriter(path, "gpt2")
    add_shape(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head)
    writer.add_layer_norm_eps(1e-5)
    add_byte_vocabulary(writer)
    mat = lambda *shape: normal_weights(rng, shape)  # noqa: E731  (numpy order: rows = ggml ne[1])
    one, zero = (lambda n: np.ones(n, np.float32)), (lambda n: np.zeros(n, np.float32))
    tensors = {"token_embd.weight": mat(N_BASE_VOCAB, n_embd), "position_embd.weight": mat(n_ctx_train, n_embd),
               "output_norm.weight": one(n_embd), "output_norm.bias": zero(n_embd),
               "output.weight": mat(N_BASE_VOCAB, n_embd)}
    for i in range(n_layer):
        tensors |= {f"blk.{i}.attn_norm.weight": one(n_embd), f"blk.{i}.attn_norm.bias": zero(n_embd),
                    f"blk.{i}.attn_qkv.weight": mat(3 * n_embd, n_embd), f"blk.{i}.attn_qkv.bias": zero(3 * n_embd),
                    f"blk.{i}.attn_output.weight": mat(n_embd, n_embd), f"blk.{i}.attn_output.bias": zero(n_embd),
                    f"blk.{i}.ffn_norm.weight": one(n_embd), f"blk.{i}.ffn_norm.bias": zero(n_embd),
                    f"blk.{i}.ffn_up.weight": mat(n_ff, n_embd), f"blk.{i}.ffn_up.bias": zero(n_ff),
                    f"blk.{i}.ffn_down.weight": mat(n_embd, n_ff), f"blk.{i}.ffn_down.bias": zero(n_embd)}
    return write_all(writer, tensors, path)


def write_gemma3_gguf(path, *, n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 1,
                      sliding_window: int = 8, n_ctx_train: int = 512, seed: int = 0) -> Path:
    """A tiny Gemma 3 with a sliding window (llama.cpp gives it an iSWA cache), f32."""
    path, rng, n_ff, hd = Path(path), np.random.default_rng(seed), 2 * n_embd, n_embd // n_head
    writer = gguf.GGUFWriter(path, "gemma3")
    add_shape(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv)
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(sliding_window)
    writer.add_rope_freq_base(10000.0)
    add_byte_vocabulary(writer)
    mat = lambda *shape: normal_weights(rng, shape)  # noqa: E731
    one = lambda n: np.ones(n, np.float32)  # noqa: E731
    tensors = {"token_embd.weight": mat(N_BASE_VOCAB, n_embd), "output_norm.weight": one(n_embd)}
    for i in range(n_layer):
        tensors |= {f"blk.{i}.attn_norm.weight": one(n_embd), f"blk.{i}.attn_q.weight": mat(n_head * hd, n_embd),
                    f"blk.{i}.attn_k.weight": mat(n_head_kv * hd, n_embd),
                    f"blk.{i}.attn_v.weight": mat(n_head_kv * hd, n_embd),
                    f"blk.{i}.attn_output.weight": mat(n_embd, n_head * hd),
                    f"blk.{i}.post_attention_norm.weight": one(n_embd), f"blk.{i}.attn_k_norm.weight": one(hd),
                    f"blk.{i}.attn_q_norm.weight": one(hd), f"blk.{i}.ffn_norm.weight": one(n_embd),
                    f"blk.{i}.ffn_gate.weight": mat(n_ff, n_embd), f"blk.{i}.ffn_up.weight": mat(n_ff, n_embd),
                    f"blk.{i}.ffn_down.weight": mat(n_embd, n_ff), f"blk.{i}.post_ffw_norm.weight": one(n_embd)}
    return write_all(writer, tensors, path)


FAMILIES = ("llama", "llama-rope-freqs", "qwen2", "qwen2-yarn", "qwen3", "phi3")


def write_family_gguf(path, family: str, *, n_embd: int = 128, n_layer: int = 1, n_head: int = 4,
                      n_head_kv: int = 2, n_ctx_train: int = 4096, seed: int = 0,
                      weight_std: float = WEIGHT_STD) -> Path:
    """A tiny random model of one RoPE family, f32, with what sets it apart from a plain llama:

    llama-rope-freqs  llama-3 frequency factors (a `rope_freqs` tensor)
    qwen2             Q/K/V biases, NEOX-style RoPE (the rotate-half pairing)
    qwen2-yarn        the same with YaRN rope scaling (factor 4)
    qwen3             QK-norm (RMS norm of each head's q and k), NEOX RoPE
    phi3              fused QKV and gate/up projections, long/short RoPE factors
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")
    path, rng = Path(path), np.random.default_rng(seed)
    hd, n_ff = n_embd // n_head, 2 * n_embd
    kv = n_head_kv * hd
    arch = {"llama-rope-freqs": "llama", "qwen2-yarn": "qwen2"}.get(family, family)
    writer = gguf.GGUFWriter(path, arch)
    add_shape(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hd)
    if family == "qwen2-yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(4.0)
        writer.add_rope_scaling_orig_ctx_len(n_ctx_train // 4)
    if family == "phi3":
        writer.add_rope_scaling_orig_ctx_len(n_ctx_train // 4)  # a longer context picks the long factors
    add_byte_vocabulary(writer)
    mat = lambda *shape: normal_weights(rng, shape, weight_std)  # noqa: E731
    one = lambda n: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    bias = lambda n: (0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    factors = lambda: np.linspace(1.0, 8.0, hd // 2, dtype=np.float32)  # noqa: E731
    tensors = {"token_embd.weight": mat(N_BASE_VOCAB, n_embd), "output_norm.weight": one(n_embd),
               "output.weight": mat(N_BASE_VOCAB, n_embd)}
    if family == "llama-rope-freqs":
        tensors["rope_freqs.weight"] = factors()
    if family == "phi3":
        tensors |= {"rope_factors_long.weight": factors(), "rope_factors_short.weight": factors()[::-1] / 4}
    for i in range(n_layer):
        b = f"blk.{i}."
        t = {b + "attn_norm.weight": one(n_embd), b + "attn_output.weight": mat(n_embd, n_embd),
             b + "ffn_norm.weight": one(n_embd), b + "ffn_down.weight": mat(n_embd, n_ff)}
        if family == "phi3":
            t |= {b + "attn_qkv.weight": mat(n_embd + 2 * kv, n_embd), b + "ffn_up.weight": mat(2 * n_ff, n_embd)}
        else:
            t |= {b + "attn_q.weight": mat(n_embd, n_embd), b + "attn_k.weight": mat(kv, n_embd),
                  b + "attn_v.weight": mat(kv, n_embd), b + "ffn_gate.weight": mat(n_ff, n_embd),
                  b + "ffn_up.weight": mat(n_ff, n_embd)}
        if arch == "qwen2":
            t |= {b + "attn_q.bias": bias(n_embd), b + "attn_k.bias": bias(kv), b + "attn_v.bias": bias(kv)}
        if family == "qwen3":
            t |= {b + "attn_q_norm.weight": one(hd), b + "attn_k_norm.weight": one(hd)}
        tensors |= t
    return write_all(writer, tensors, path)


def write_qwen2vl_gguf(path, *, n_embd: int = 64, n_layer: int = 1, n_head: int = 4, n_head_kv: int = 2,
                       n_ctx_train: int = 512, seed: int = 0) -> Path:
    """A tiny Qwen2-VL text model: multi-dimensional RoPE (M-RoPE) with rope sections, f32."""
    path, rng, n_ff, hd = Path(path), np.random.default_rng(seed), 2 * n_embd, n_embd // n_head
    writer = gguf.GGUFWriter(path, "qwen2vl")
    add_shape(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hd)
    writer.add_rope_dimension_sections([hd // 8, hd // 8, hd // 4, 0])  # time, height, width: pairs of dims
    add_byte_vocabulary(writer)
    mat = lambda *shape: normal_weights(rng, shape)  # noqa: E731
    one, zero = (lambda n: np.ones(n, np.float32)), (lambda n: np.zeros(n, np.float32))
    tensors = {"token_embd.weight": mat(N_BASE_VOCAB, n_embd), "output_norm.weight": one(n_embd),
               "output.weight": mat(N_BASE_VOCAB, n_embd)}
    for i in range(n_layer):
        tensors |= {f"blk.{i}.attn_norm.weight": one(n_embd),
                    f"blk.{i}.attn_q.weight": mat(n_embd, n_embd), f"blk.{i}.attn_q.bias": zero(n_embd),
                    f"blk.{i}.attn_k.weight": mat(n_head_kv * hd, n_embd), f"blk.{i}.attn_k.bias": zero(n_head_kv * hd),
                    f"blk.{i}.attn_v.weight": mat(n_head_kv * hd, n_embd), f"blk.{i}.attn_v.bias": zero(n_head_kv * hd),
                    f"blk.{i}.attn_output.weight": mat(n_embd, n_embd), f"blk.{i}.ffn_norm.weight": one(n_embd),
                    f"blk.{i}.ffn_gate.weight": mat(n_ff, n_embd), f"blk.{i}.ffn_up.weight": mat(n_ff, n_embd),
                    f"blk.{i}.ffn_down.weight": mat(n_embd, n_ff)}
    return write_all(writer, tensors, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.gguf_gen", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output .gguf path")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--dtype", choices=sorted(QTYPES), help="matrix dtype (default: per preset)")
    for flag in ("n-embd", "n-layer", "n-head", "n-head-kv", "n-ff", "n-vocab", "n-ctx-train", "seed"):
        parser.add_argument(f"--{flag}", type=int)
    parser.add_argument("--rope-theta", type=float)
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                        help="random quantized blocks instead of quantized normal weights")
    args = parser.parse_args(argv)

    params = dict(PRESETS[args.preset])
    for key in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_vocab", "n_ctx_train",
                "seed", "rope_theta"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    dtype = args.dtype or PRESET_DTYPES[args.preset]
    path = write_llama_gguf(args.out, dtype=dtype, fast=args.fast, **params)
    print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
