"""GGUF files with random weights, for tests and speed benchmarks.

Llama models of any size (`write_llama_gguf`, the command line), and tiny f32 models of other
architectures: RoPE families (`write_family_gguf`: FAMILIES, and the sliding-window ISWA_FAMILIES),
models hogwild refuses (GPT-2, Qwen2-VL, recurrent Mamba, hybrid LFM2). Tiny models are written in
milliseconds and tokenize any text through SentencePiece-style byte fallback. Large presets ("1b",
"8b") skip numpy quantization and write random quantized blocks with a small fixed scale: fast, and
only good for timing.

    python -m models.gguf_gen tiny.gguf
    python -m models.gguf_gen bench-1b.gguf --preset 1b --dtype q4_0
    python -m models.gguf_gen bench-8b.gguf --preset 8b --words   # the protocol's texts tokenize as in a real model
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


def vocabulary(n_vocab: int = N_BASE_VOCAB, words: list[str] = ()) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of a byte-fallback SentencePiece vocabulary; `words` (pieces from
    `word_pieces`) take the places of padding tokens."""
    if n_vocab < N_BASE_VOCAB + len(words):
        raise ValueError(f"n_vocab must be at least {N_BASE_VOCAB + len(words)}")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    # without a SPACE token, spaces would decode as the bytes of U+2581
    tokens.append(SPACE)
    types.append(gguf.TokenType.NORMAL)
    scores = [0.0] * N_BASE_VOCAB
    # SentencePiece merges the best-scoring adjacent pair whose join is a token: a longer piece scores higher
    tokens += words
    types += [gguf.TokenType.NORMAL] * len(words)
    scores += [float(len(w)) for w in words]
    # padding tokens only make the embedding and output matrices realistic in size
    n_base = N_BASE_VOCAB + len(words)
    tokens += [f"<dummy{i:06d}>" for i in range(n_base, n_vocab)]
    types += [gguf.TokenType.NORMAL] * (n_vocab - n_base)
    scores += [0.0] * (n_vocab - n_base)
    return tokens, scores, [int(t) for t in types]


def word_pieces(text: str) -> list[str]:
    """Pieces that make a SentencePiece vocabulary split `text` about as a real model's does: every
    word (a run of letters or digits, with its leading space as SPACE) and every run of punctuation
    becomes one token, reached through its prefixes (each merge joins a piece and the next character).

    The byte vocabulary alone spells every character: "**Alice [3]:** " is 16 tokens there and 7 in
    SmolLM2's or Gemma 3's vocabulary, and on a GPU a batch of more than 8 tokens leaves the mat-vec
    kernels, so speed benchmarks of the protocol's labels need words."""
    import re

    pieces: dict[str, None] = {}
    for m in re.finditer(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+", text):
        word = m.group().replace(" ", SPACE)
        for i in range(2, len(word) + 1):
            pieces.setdefault(word[:i], None)
    return list(pieces)


def protocol_words() -> list[str]:
    """The word pieces of this project's own texts: the default protocol (headers, markers, labels, openers,
    instructions), its worker names, and `hogwild bench --e2e`'s problem."""
    from hogwild_cpp import protocol
    from hogwild_cpp.bench import E2E_PROBLEM
    from hogwild_cpp.layouts import LAYOUTS

    p, names = protocol.default(), protocol.default_names(8)
    texts = [p.instructions(names, lay) for lay in LAYOUTS.values()] + [p.finisher_text(None), E2E_PROBLEM]
    texts += [p[f"layout.{k}"] for k in ("history_header", "others_header", "marker", "own_header",
                                           "own_workspace_header")]
    texts += [p.step_prefix(n, k) + p.opener(names, i) + p.check_question(names, n)
              for i, n in enumerate(names) for k in range(1, 10)]
    return word_pieces("\n".join(texts))


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
    words: bool = False,
) -> Path:
    """Write a llama GGUF with random weights; 2-D matrices in `dtype`, norms f32 (= 1).

    `fast` writes random quantized blocks instead of quantizing normal weights; by default
    it is on for models over 50M parameters. `words`: the vocabulary also has the word pieces of the
    protocol's texts (`protocol_words`), so that they tokenize about as in a real model.
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

    add_byte_vocabulary(writer, n_vocab, protocol_words() if words else ())
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


def add_byte_vocabulary(writer: gguf.GGUFWriter, n_vocab: int = N_BASE_VOCAB, words: list[str] = ()) -> None:
    """The SentencePiece-style byte vocabulary every generated model uses (with `words`, word pieces too)."""
    tokens, scores, types = vocabulary(n_vocab, words)
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


class RandomTensors:
    """The random tensors of one tiny model, drawn in the order asked for: a seed gives one file.

    Shapes are numpy's (rows = ggml's ne[1]). Matrices are normal with std `std`, norm weights
    about 1 and biases about 0, each with a little random variation so that no term hides.
    """

    def __init__(self, seed: int, std: float = WEIGHT_STD):
        self.rng, self.std = np.random.default_rng(seed), std

    def mat(self, *shape: int) -> np.ndarray:
        return normal_weights(self.rng, shape, self.std)

    def one(self, n: int) -> np.ndarray:
        return (1.0 + 0.1 * self.rng.standard_normal(n)).astype(np.float32)

    def bias(self, n: int) -> np.ndarray:
        return (0.1 * self.rng.standard_normal(n)).astype(np.float32)


FAMILIES = ("llama", "llama-rope-freqs", "qwen2", "qwen2-yarn", "qwen3", "phi3", "stablelm")
# sliding-window families: llama.cpp gives them two KV caches (iSWA); tests wire them in once supported
ISWA_FAMILIES = ("gemma2", "gemma3")
FAMILY_ARCH = {"llama-rope-freqs": "llama", "qwen2-yarn": "qwen2"}  # a family is its architecture otherwise
STABLELM_ROTARY_DIVISOR = 4  # StableLM 2 rotates head_dim / 4 dims (partial_rotary_factor 0.25)


def write_family_gguf(path, family: str, *, n_embd: int = 128, n_layer: int = 1, n_head: int = 4,
                      n_head_kv: int = 2, n_ctx_train: int = 4096, seed: int = 0,
                      weight_std: float = WEIGHT_STD, sliding_window: int = 16) -> Path:
    """A tiny random model of one RoPE family, f32, with what sets it apart from a plain llama:

    llama-rope-freqs  llama-3 frequency factors (a `rope_freqs` tensor)
    qwen2             Q/K/V biases, NEOX-style RoPE (the rotate-half pairing)
    qwen2-yarn        the same with YaRN rope scaling (factor 4)
    qwen3             QK-norm (RMS norm of each head's q and k), NEOX RoPE
    phi3              fused QKV and gate/up projections, long/short RoPE factors
    stablelm          partial rotary: RoPE on the first quarter of each head only (n_rot = head_dim / 4),
                      NEOX pairing within it; LayerNorm with biases, Q/K/V biases
    gemma2, gemma3    interleaved sliding-window attention (ISWA_FAMILIES): see `write_gemma_gguf`

    `sliding_window` is used by the Gemma families only.
    """
    if family in ISWA_FAMILIES:
        return write_gemma_gguf(path, family, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
                                n_ctx_train=n_ctx_train, seed=seed, weight_std=weight_std,
                                sliding_window=sliding_window)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES + ISWA_FAMILIES}")
    path, r = Path(path), RandomTensors(seed, weight_std)
    hd, n_ff = n_embd // n_head, 2 * n_embd
    writer = gguf.GGUFWriter(path, FAMILY_ARCH.get(family, family))
    add_shape(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv)
    add_family_rope_and_norm_keys(writer, family, hd, n_ctx_train)
    add_byte_vocabulary(writer)
    tensors = {"token_embd.weight": r.mat(N_BASE_VOCAB, n_embd), "output_norm.weight": r.one(n_embd),
               "output.weight": r.mat(N_BASE_VOCAB, n_embd)}
    factors = lambda: np.linspace(1.0, 8.0, hd // 2, dtype=np.float32)  # noqa: E731
    if family == "llama-rope-freqs":
        tensors["rope_freqs.weight"] = factors()
    if family == "phi3":
        tensors |= {"rope_factors_long.weight": factors(), "rope_factors_short.weight": factors()[::-1] / 4}
    if family == "stablelm":
        tensors["output_norm.bias"] = r.bias(n_embd)
    for i in range(n_layer):
        tensors |= family_layer(r, family, f"blk.{i}.", n_embd, n_head_kv * hd, hd, n_ff)
    return write_all(writer, tensors, path)


def add_family_rope_and_norm_keys(writer: gguf.GGUFWriter, family: str, hd: int, n_ctx_train: int) -> None:
    if family == "stablelm":
        writer.add_layer_norm_eps(1e-5)
    else:
        writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hd // STABLELM_ROTARY_DIVISOR if family == "stablelm" else hd)
    if family == "qwen2-yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(4.0)
        writer.add_rope_scaling_orig_ctx_len(n_ctx_train // 4)
    if family == "phi3":
        writer.add_rope_scaling_orig_ctx_len(n_ctx_train // 4)  # a longer context picks the long factors


def family_layer(r: RandomTensors, family: str, b: str, n_embd: int, kv: int, hd: int, n_ff: int) -> dict:
    """The tensors of one block of a RoPE family (prefix `b`)."""
    t = {b + "attn_norm.weight": r.one(n_embd), b + "attn_output.weight": r.mat(n_embd, n_embd),
         b + "ffn_norm.weight": r.one(n_embd), b + "ffn_down.weight": r.mat(n_embd, n_ff)}
    if family == "phi3":
        t |= {b + "attn_qkv.weight": r.mat(n_embd + 2 * kv, n_embd), b + "ffn_up.weight": r.mat(2 * n_ff, n_embd)}
    else:
        t |= {b + "attn_q.weight": r.mat(n_embd, n_embd), b + "attn_k.weight": r.mat(kv, n_embd),
              b + "attn_v.weight": r.mat(kv, n_embd), b + "ffn_gate.weight": r.mat(n_ff, n_embd),
              b + "ffn_up.weight": r.mat(n_ff, n_embd)}
    if FAMILY_ARCH.get(family, family) in ("qwen2", "stablelm"):
        t |= {b + "attn_q.bias": r.bias(n_embd), b + "attn_k.bias": r.bias(kv), b + "attn_v.bias": r.bias(kv)}
    if family == "stablelm":
        t |= {b + "attn_norm.bias": r.bias(n_embd), b + "ffn_norm.bias": r.bias(n_embd)}
    if family == "qwen3":
        t |= {b + "attn_q_norm.weight": r.one(hd), b + "attn_k_norm.weight": r.one(hd)}
    return t


GEMMA2_SOFTCAP_ATTN, GEMMA2_SOFTCAP_FINAL = 50.0, 30.0  # as Gemma 2 ships
GEMMA3_ROPE_BASE_GLOBAL, GEMMA3_ROPE_BASE_LOCAL, GEMMA3_ROPE_LINEAR_FACTOR = 1_000_000.0, 10_000.0, 8.0  # Gemma 3 27B


def write_gemma_gguf(path, family: str = "gemma3", *, n_embd: int = 128, n_layer: int = 1, n_head: int = 4,
                     n_head_kv: int = 2, n_ctx_train: int = 4096, seed: int = 0, weight_std: float = WEIGHT_STD,
                     sliding_window: int = 16) -> Path:
    """A tiny Gemma 2 or Gemma 3, f32: interleaved sliding-window attention (iSWA in llama.cpp).

    Which layers slide is llama.cpp's default pattern for the architecture (no pattern key is written,
    as in converted Gemma files); a one-layer model's single layer always slides:

    gemma2  every other layer: layers 0, 2, 4, ... slide over the last `sliding_window` tokens,
            1, 3, 5, ... attend globally (n_layer >= 2 for a global layer)
    gemma3  five in six: layer i slides unless i % 6 == 5; 5, 11, 17, ... are global
            (n_layer >= 6 for a global layer)

    Both: the embedding scaled by sqrt(n_embd), NEOX RoPE, RMS norms before and after attention and
    the FFN (post_attention_norm, post_ffw_norm), GELU-gated FFN, output tied to token_embd, head_dim
    written as key/value length. llama.cpp reads no query_pre_attn_scalar: it scales q by
    1/sqrt(head_dim), or 1/sqrt(n_embd / n_head) for the 27B shapes it recognises by layer count.

    gemma2  tanh soft-capping of attention logits (50) and final logits (30); one rope base.
    gemma3  QK-norm (RMS norm of each head's q and k); rope base 1e6 on global layers, 1e4 on sliding
            ones, and linear rope scaling (factor 8) that llama.cpp applies to global layers only.
    """
    if family not in ISWA_FAMILIES:
        raise ValueError(f"family must be one of {ISWA_FAMILIES}")
    path, r = Path(path), RandomTensors(seed, weight_std)
    hd, n_ff = n_embd // n_head, 2 * n_embd
    writer = gguf.GGUFWriter(path, family)
    add_shape(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv)
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(sliding_window)
    if family == "gemma2":
        writer.add_rope_freq_base(10000.0)
        writer.add_attn_logit_softcapping(GEMMA2_SOFTCAP_ATTN)
        writer.add_final_logit_softcapping(GEMMA2_SOFTCAP_FINAL)
    else:
        writer.add_rope_freq_base(GEMMA3_ROPE_BASE_GLOBAL)
        writer.add_rope_freq_base_swa(GEMMA3_ROPE_BASE_LOCAL)
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(GEMMA3_ROPE_LINEAR_FACTOR)
    add_byte_vocabulary(writer)
    tensors = {"token_embd.weight": r.mat(N_BASE_VOCAB, n_embd), "output_norm.weight": r.one(n_embd)}
    for i in range(n_layer):
        tensors |= gemma_layer(r, family, f"blk.{i}.", n_embd, n_head * hd, n_head_kv * hd, hd, n_ff)
    return write_all(writer, tensors, path)


def gemma_layer(r: RandomTensors, family: str, b: str, n_embd: int, q: int, kv: int, hd: int, n_ff: int) -> dict:
    """One Gemma block: norms around attention and around the FFN; Gemma 3 adds QK-norm."""
    t = {b + "attn_norm.weight": r.one(n_embd), b + "attn_q.weight": r.mat(q, n_embd),
         b + "attn_k.weight": r.mat(kv, n_embd), b + "attn_v.weight": r.mat(kv, n_embd),
         b + "attn_output.weight": r.mat(n_embd, q), b + "post_attention_norm.weight": r.one(n_embd)}
    if family == "gemma3":
        t |= {b + "attn_q_norm.weight": r.one(hd), b + "attn_k_norm.weight": r.one(hd)}
    return t | {b + "ffn_norm.weight": r.one(n_embd), b + "ffn_gate.weight": r.mat(n_ff, n_embd),
                b + "ffn_up.weight": r.mat(n_ff, n_embd), b + "ffn_down.weight": r.mat(n_embd, n_ff),
                b + "post_ffw_norm.weight": r.one(n_embd)}


def write_gemma3_gguf(path, **kw) -> Path:
    """`write_gemma_gguf(path, "gemma3", ...)`: kept for callers of the old name."""
    return write_gemma_gguf(path, "gemma3", **kw)


def write_mamba_gguf(path, *, n_embd: int = 64, n_layer: int = 1, d_state: int = 16, d_conv: int = 4,
                     n_ctx_train: int = 4096, seed: int = 0, weight_std: float = WEIGHT_STD) -> Path:
    """A tiny Mamba (1), f32: no attention and no positions, a recurrent state per sequence instead.

    Each block: RMS norm, in-projection to x and a gate z (d_inner = 2 * n_embd, the only expansion
    llama.cpp supports), a causal depthwise conv of width `d_conv` over x, the selective scan with
    a state of `d_state` per channel, gated by silu(z), out-projection. A = -(1..d_state) per
    channel and dt bias = softplus^-1 of dt in [1e-3, 1e-1], as Mamba initialises them (so the scan
    is stable whatever the random weights); the output is tied to token_embd, as in mamba-130m.
    llama.cpp gives it recurrent memory (llama_memory_recurrent), no KV cache.
    """
    path, r = Path(path), RandomTensors(seed, weight_std)
    d_inner, dt_rank = 2 * n_embd, -(n_embd // -16)
    writer = gguf.GGUFWriter(path, "mamba")
    add_shape(writer, n_ctx_train, n_embd, n_layer, 0, 0)  # no FFN, no heads
    writer.add_ssm_conv_kernel(d_conv)
    writer.add_ssm_inner_size(d_inner)
    writer.add_ssm_state_size(d_state)
    writer.add_ssm_time_step_rank(dt_rank)
    writer.add_ssm_dt_b_c_rms(False)
    writer.add_layer_norm_rms_eps(1e-5)
    add_byte_vocabulary(writer)
    tensors = {"token_embd.weight": r.mat(N_BASE_VOCAB, n_embd), "output_norm.weight": r.one(n_embd)}
    a = -np.tile(np.arange(1, d_state + 1, dtype=np.float32), (d_inner, 1))
    for i in range(n_layer):
        b = f"blk.{i}."
        dt = np.exp(r.rng.uniform(np.log(1e-3), np.log(1e-1), d_inner))
        tensors |= {b + "attn_norm.weight": r.one(n_embd), b + "ssm_in.weight": r.mat(2 * d_inner, n_embd),
                    b + "ssm_conv1d.weight": r.mat(d_inner, d_conv), b + "ssm_conv1d.bias": r.bias(d_inner),
                    b + "ssm_x.weight": r.mat(dt_rank + 2 * d_state, d_inner),
                    b + "ssm_dt.weight": r.mat(d_inner, dt_rank),
                    b + "ssm_dt.bias": (dt + np.log(-np.expm1(-dt))).astype(np.float32),
                    b + "ssm_a": a.copy(), b + "ssm_d": r.one(d_inner), b + "ssm_out.weight": r.mat(n_embd, d_inner)}
    return write_all(writer, tensors, path)


def lfm2_attention_layers(n_layer: int) -> list[int]:
    """The attention layers of `write_lfm2_gguf`: every third, from layer 1 (0 is always a conv layer)."""
    return [i for i in range(n_layer) if i % 3 == 1]


def write_lfm2_gguf(path, *, n_embd: int = 64, n_layer: int = 3, n_head: int = 4, n_head_kv: int = 2,
                    conv_l_cache: int = 3, n_ctx_train: int = 4096, seed: int = 0,
                    weight_std: float = WEIGHT_STD) -> Path:
    """A tiny LFM2, f32: a hybrid of gated short-convolution layers and attention layers.

    The attention layers are `lfm2_attention_layers(n_layer)` (1, 4, 7, ...; n_layer >= 2 for one);
    the others are short-conv blocks: in-projection to B, C, x, a causal depthwise conv of width
    `conv_l_cache` over B*x, times C, out-projection; their state is the last conv_l_cache - 1 inputs.
    The GGUF marks a conv layer by head_count_kv 0 (a per-layer array, as the converter writes it).
    Attention: GQA with QK-norm and NEOX RoPE (base 1e6). Every layer has a SwiGLU FFN; the
    output is tied to token_embd and the final norm is named token_embd_norm, as in LFM2 files.
    llama.cpp gives it hybrid memory (llama_memory_hybrid: a KV cache for the attention layers and
    recurrent state for the conv layers).
    """
    path, r = Path(path), RandomTensors(seed, weight_std)
    hd, n_ff, kv = n_embd // n_head, 2 * n_embd, n_head_kv * (n_embd // n_head)
    attention = set(lfm2_attention_layers(n_layer))
    writer = gguf.GGUFWriter(path, "lfm2")
    add_shape(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head, [n_head_kv if i in attention else 0
                                                                   for i in range(n_layer)])
    writer.add_shortconv_l_cache(conv_l_cache)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(1_000_000.0)
    add_byte_vocabulary(writer)
    tensors = {"token_embd.weight": r.mat(N_BASE_VOCAB, n_embd), "token_embd_norm.weight": r.one(n_embd)}
    for i in range(n_layer):
        b = f"blk.{i}."
        t = {b + "attn_norm.weight": r.one(n_embd), b + "ffn_norm.weight": r.one(n_embd),
             b + "ffn_gate.weight": r.mat(n_ff, n_embd), b + "ffn_up.weight": r.mat(n_ff, n_embd),
             b + "ffn_down.weight": r.mat(n_embd, n_ff)}
        if i in attention:
            t |= {b + "attn_q.weight": r.mat(n_embd, n_embd), b + "attn_k.weight": r.mat(kv, n_embd),
                  b + "attn_v.weight": r.mat(kv, n_embd), b + "attn_output.weight": r.mat(n_embd, n_embd),
                  b + "attn_q_norm.weight": r.one(hd), b + "attn_k_norm.weight": r.one(hd)}
        else:
            t |= {b + "shortconv.conv.weight": r.mat(n_embd, conv_l_cache),
                  b + "shortconv.in_proj.weight": r.mat(3 * n_embd, n_embd),
                  b + "shortconv.out_proj.weight": r.mat(n_embd, n_embd)}
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
    parser.add_argument("--words", action="store_true",
                        help="word pieces of the protocol's texts in the vocabulary (labels, headers and prompts "
                             "tokenize about as in a real model; the byte vocabulary spells them out)")
    args = parser.parse_args(argv)

    params = dict(PRESETS[args.preset])
    for key in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_vocab", "n_ctx_train",
                "seed", "rope_theta"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    dtype = args.dtype or PRESET_DTYPES[args.preset]
    path = write_llama_gguf(args.out, dtype=dtype, fast=args.fast, words=args.words, **params)
    print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
