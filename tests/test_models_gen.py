"""The random GGUF generator writes models that stock llama.cpp loads and runs: llama in every dtype, and
the other architectures (sliding-window Gemma 2/3, partial-rotary StableLM, recurrent Mamba, hybrid LFM2)."""

import ctypes

import gguf
import llama_cpp
import numpy as np
import pytest

from models import gguf_gen
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


def test_word_pieces_tokenize_the_protocol_as_a_real_vocabulary_does(tmp_path):
    """With `words`, a step's label is 7 tokens, as in SmolLM2's and Gemma 3's vocabularies (16 with bytes
    alone), and any text still tokenizes and reads back."""
    from hogwild_cpp import protocol

    p = protocol.default()
    label = p.step_prefix("Alice", 3)
    words = write_llama_gguf(tmp_path / "w.gguf", n_vocab=2048, words=True)
    m, b = LoadedModel(words), LoadedModel(write_llama_gguf(tmp_path / "b.gguf"))
    try:
        assert len(m.tokenize(label)) - 1 == 7  # after BOS
        assert len(b.tokenize(label)) - 1 == 16
        for text in (label, p["layout.marker"], "naïve café, 42 € — not in the list"):
            pieces = b""
            for t in m.tokenize(text)[1:]:
                buf = ctypes.create_string_buffer(64)
                n = llama_cpp.llama_token_to_piece(m.vocab, t, buf, len(buf), 0, False)
                pieces += buf.raw[:n]
            assert pieces.decode().strip() == text.strip()
    finally:
        m.close()
        b.close()


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


PROMPT = "Two trains leave at noon."
LLAMA_ROPE_TYPE_NEOX = 2


def decodes_to_finite_logits(m: LoadedModel) -> np.ndarray:
    """A prompt, then a few greedy tokens: every step's logits finite and not constant. The last ones."""
    logits = m.decode(m.tokenize(PROMPT))
    for _ in range(3):
        assert np.isfinite(logits).all() and logits.std() > 0
        logits = m.decode([int(logits.argmax())])
    assert np.isfinite(logits).all()
    return logits


def last_logits(path, tokens: list[int]) -> np.ndarray:
    m = LoadedModel(path)
    try:
        return m.decode(tokens)
    finally:
        m.close()


@pytest.mark.parametrize("family", gguf_gen.ISWA_FAMILIES)
def test_sliding_window_families_load_with_their_window_and_decode(tmp_path, family):
    path = gguf_gen.write_family_gguf(tmp_path / f"{family}.gguf", family, n_layer=6, sliding_window=8,
                                      weight_std=0.3)
    m = LoadedModel(path)
    try:
        assert llama_cpp.llama_model_n_swa(m.model) == 8
        assert llama_cpp.llama_model_rope_type(m.model) == LLAMA_ROPE_TYPE_NEOX
        logits = decodes_to_finite_logits(m)
        if family == "gemma2":
            assert np.abs(logits).max() <= gguf_gen.GEMMA2_SOFTCAP_FINAL  # final logits soft-capped
        else:  # the linear rope scaling is the model's (global layers); sliding layers keep scale 1
            assert llama_cpp.llama_model_rope_freq_scale_train(m.model) == pytest.approx(
                1 / gguf_gen.GEMMA3_ROPE_LINEAR_FACTOR)
    finally:
        m.close()


@pytest.mark.parametrize("family, n_layer, has_global_layer", [
    ("gemma2", 1, False), ("gemma2", 2, True),   # layer 1 is global
    ("gemma3", 5, False), ("gemma3", 6, True),   # layer 5 is global
])
def test_only_a_global_layer_sees_past_the_sliding_windows(tmp_path, family, n_layer, has_global_layer):
    """Window 4, 24 tokens: through sliding layers alone the last token reaches back n_layer * 3 < 23
    tokens, so the first token cannot change its logits; a global layer sees it."""
    path = gguf_gen.write_family_gguf(tmp_path / "m.gguf", family, n_layer=n_layer, sliding_window=4,
                                      weight_std=0.3, seed=2)
    rest = list(range(40, 63))
    a, b = last_logits(path, [10] + rest), last_logits(path, [11] + rest)
    if has_global_layer:
        assert np.abs(a - b).max() > 1e-3
    else:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_partial_rotary_stablelm_loads_and_decodes(tmp_path):
    path = gguf_gen.write_family_gguf(tmp_path / "stablelm.gguf", "stablelm", n_layer=2, weight_std=0.3)
    fields = gguf.GGUFReader(path).fields
    n_rot = int(fields["stablelm.rope.dimension_count"].parts[-1][0])
    m = LoadedModel(path)
    try:
        head_dim = llama_cpp.llama_model_n_embd(m.model) // llama_cpp.llama_model_n_head(m.model)
        assert n_rot == head_dim // 4  # RoPE on a quarter of each head, as StableLM 2
        assert llama_cpp.llama_model_rope_type(m.model) == LLAMA_ROPE_TYPE_NEOX
        decodes_to_finite_logits(m)
    finally:
        m.close()


@pytest.mark.parametrize("writer, recurrent, hybrid", [(gguf_gen.write_mamba_gguf, True, False),
                                                        (gguf_gen.write_lfm2_gguf, False, True)])
def test_recurrent_and_hybrid_models_load_and_carry_their_state_across_decodes(tmp_path, writer, recurrent, hybrid):
    """Token by token through the recurrent state gives the logits of one batch."""
    path = writer(tmp_path / "m.gguf", n_layer=3, weight_std=0.3)
    m = LoadedModel(path)
    try:
        assert llama_cpp.llama_model_is_recurrent(m.model) == recurrent
        assert llama_cpp.llama_model_is_hybrid(m.model) == hybrid
        decodes_to_finite_logits(m)
        tokens = m.tokenize(PROMPT)
    finally:
        m.close()
    m = LoadedModel(path)
    try:
        for t in tokens:
            stepwise = m.decode([t])
    finally:
        m.close()
    np.testing.assert_allclose(stepwise, last_logits(path, tokens), rtol=0, atol=1e-3 * np.abs(stepwise).max())
