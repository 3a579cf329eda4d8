"""The random GGUF generator writes llama models that llama.cpp loads and runs."""

import ctypes

import llama_cpp
import numpy as np
import pytest

from models.gguf_gen import N_BASE_VOCAB, write_llama_gguf

DTYPES = ["f32", "f16", "q8_0", "q4_0"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-models")
    return {d: write_llama_gguf(out / f"tiny-{d}.gguf", dtype=d) for d in DTYPES}


class LoadedModel:
    """A model and a context, through llama.cpp's C API only."""

    def __init__(self, path, n_ctx=128):
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        assert self.model, f"llama.cpp could not load {path}"
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        # one thread: tiny models gain nothing from more, and spinning threads on a busy
        # 2-core machine make each decode take hundreds of milliseconds
        cparams.n_threads = cparams.n_threads_batch = 1
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        assert self.ctx
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, False)
        assert n >= 0
        return list(buf[:n])

    def decode(self, tokens: list[int]) -> np.ndarray:
        """Decode `tokens` after what is already in the cache; logits of the last one."""
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        assert llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(arr, len(tokens))) == 0
        logits = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.n_vocab,)).copy()

    def close(self):
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


@pytest.mark.parametrize("dtype", DTYPES)
def test_generated_model_loads_with_the_vocab_size_it_was_written_with(tiny_models, dtype):
    m = LoadedModel(tiny_models[dtype])
    try:
        assert m.n_vocab == N_BASE_VOCAB
    finally:
        m.close()


@pytest.mark.parametrize("dtype", DTYPES)
def test_generated_model_decodes_greedily_with_finite_logits(tiny_models, dtype):
    m = LoadedModel(tiny_models[dtype])
    try:
        logits = m.decode(m.tokenize("Two trains leave at noon."))
        for _ in range(4):
            assert np.isfinite(logits).all()
            assert logits.std() > 0
            logits = m.decode([int(logits.argmax())])
    finally:
        m.close()


def test_any_text_tokenizes_through_byte_fallback(tiny_models):
    m = LoadedModel(tiny_models["f32"])
    try:
        tokens = m.tokenize("naïve café, 42 €")
        assert tokens[0] == llama_cpp.llama_vocab_bos(m.vocab)
        assert llama_cpp.llama_vocab_eos(m.vocab) not in tokens
        pieces = b""
        for t in tokens[1:]:
            buf = ctypes.create_string_buffer(32)
            n = llama_cpp.llama_token_to_piece(m.vocab, t, buf, len(buf), 0, False)
            pieces += buf.raw[:n]
        assert pieces.decode().strip() == "naïve café, 42 €"
    finally:
        m.close()


def test_same_seed_writes_the_same_file_and_another_seed_does_not(tmp_path):
    a = write_llama_gguf(tmp_path / "a.gguf", dtype="q8_0", seed=1).read_bytes()
    b = write_llama_gguf(tmp_path / "b.gguf", dtype="q8_0", seed=1).read_bytes()
    c = write_llama_gguf(tmp_path / "c.gguf", dtype="q8_0", seed=2).read_bytes()
    assert a == b and a != c


def test_fast_mode_writes_loadable_random_quant_blocks(tmp_path):
    path = write_llama_gguf(tmp_path / "fast.gguf", n_embd=128, n_vocab=1000, dtype="q4_0", fast=True)
    m = LoadedModel(path)
    try:
        assert m.n_vocab == 1000
        assert np.isfinite(m.decode(m.tokenize("benchmark"))).all()
    finally:
        m.close()
