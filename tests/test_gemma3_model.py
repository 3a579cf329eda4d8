"""The second real model, Gemma 3 270M (Q4_K_M, `make model-gemma3`): it loads and decodes in stock mode,
and hogwild views on it (interleaved sliding-window attention: two KV caches) are as exact as stock.
"""

import ctypes

import llama_cpp as ll
import numpy as np
import pytest

from hogwild_cpp import default_model as dm
from hogwild_cpp.default_model import ModelNotInstalled, gemma3_model
from hogwild_cpp.native import Context, ContextConfig, Model

# Gemma's turn format, written out: this GGUF (converted from the base model) has no chat template.
PROMPT = "<start_of_turn>user\nA box holds 6 eggs. How many eggs are in 3 boxes?<end_of_turn>\n<start_of_turn>model\n"
N_TOKENS = 6


@pytest.fixture(scope="module")
def model_path():
    return gemma3_model()


@pytest.fixture(scope="module")
def model(model_path):
    m = Model(model_path)
    yield m
    m.close()


def greedy(model, tokens, n_tokens=N_TOKENS):
    """A fresh stock context; the prompt in one batch, then one token a call. Returns (tokens, logits)."""
    # one thread: on 2 shared cores, 2 ggml threads spinning against other work were 50-100x slower
    ctx = Context(model, ContextConfig(n_ctx=256, n_seq_max=2, n_threads=1, hogwild=False))
    try:
        out, all_logits = [], []
        logits = ctx.decode([(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])[0]
        for pos in range(len(tokens), len(tokens) + n_tokens):
            all_logits.append(logits)
            out.append(int(np.argmax(logits)))
            logits = ctx.decode([(out[-1], pos, 0, True)])[0]
        return out, all_logits
    finally:
        ctx.close()


def meta(model, key: str) -> str:
    buf = ctypes.create_string_buffer(256)
    n = ll.llama_model_meta_val_str(model.ptr, key.encode(), buf, len(buf))
    assert n >= 0, key
    return buf.value.decode()


def test_the_path_is_the_pinned_gemma3_gguf(model_path):
    assert model_path.is_file() and model_path.suffix == ".gguf"
    assert model_path.stat().st_size == dm.GEMMA3_SIZE
    assert gemma3_model() == model_path  # the second call finds the cached file


def test_it_loads_as_gemma3_with_its_vocabulary(model):
    assert meta(model, "general.architecture") == "gemma3"
    assert meta(model, "gemma3.block_count") == "18"
    assert meta(model, "gemma3.attention.sliding_window") == "512"
    assert model.n_vocab == 262144
    assert model.n_ctx_train == 32768
    tokens = model.tokenize(PROMPT, add_special=True)
    assert tokens[:2] == [2, 105]  # <bos>, <start_of_turn> as one special token
    assert model.special_tokens()["eot"] == 106 and model.is_eog(106)  # <end_of_turn>
    assert 106 in tokens


def test_stock_greedy_decode_of_a_chat_prompt_is_finite_and_deterministic(model):
    tokens = model.tokenize(PROMPT, add_special=True)
    first, logits = greedy(model, tokens)
    second, _ = greedy(model, tokens)
    assert all(np.isfinite(lg).all() for lg in logits)
    assert first == second
    assert all(0 <= t < model.n_vocab for t in first)


def test_reassembly_checks_the_hash_and_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOGWILD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dm, "GEMMA3_SHA256", "0" * 64)
    with pytest.raises(ModelNotInstalled, match="sha256"):
        gemma3_model()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("HOGWILD_CACHE_DIR", str(tmp_path))
    path = gemma3_model()
    assert path.parent == tmp_path and path.stat().st_size == dm.GEMMA3_SIZE
    assert list(tmp_path.iterdir()) == [path]
    path.unlink()  # 253 MB: do not keep it among pytest's kept temporary directories


def test_missing_chunks_name_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("HOGWILD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dm, "GEMMA3_CHUNKS", [("no_such_gemma3_chunk_package", "data/x.part00")])
    with pytest.raises(ModelNotInstalled, match="make model-gemma3"):
        gemma3_model()


# --- hogwild views on Gemma 3 (the equivalence tests of tests/test_cache.py on a real iSWA model) ---

@pytest.mark.parametrize("flash", ["off", "on"])
def test_one_worker_one_block_generates_exactly_like_stock_llama_cpp(model, flash):
    from test_cache import check_one_worker_generates_like_stock

    check_one_worker_generates_like_stock(model, model.tokenize(PROMPT, add_special=True), 20, flash, n_ctx=256)


@pytest.mark.parametrize("cache_type,flash", [("f16", "off"), ("f16", "on"), ("q8_0-kv", "on")])
def test_shared_prefix_at_any_offset_is_as_exact_as_stock(model, cache_type, flash):
    """Four views of one prompt at different offsets, folded and shifted half way (K rotated in both caches,
    with each layer's RoPE base): every worker's logits within stock's own noise for the same tokens."""
    from test_cache import CACHE_TYPES, check_shared_prefix_at_offsets

    type_k, type_v, tol = CACHE_TYPES[cache_type]
    check_shared_prefix_at_offsets(model, 4, type_k, type_v, tol, noise_floor=True, flash=flash)
