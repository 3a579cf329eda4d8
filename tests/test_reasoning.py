"""Reasoning models: when the chat template has a thinking section (<think> ... </think>), the
workers write inside it (the prompt opens it, the workers may not close it) and the finisher
closes it the way the template does before it asks for the answer.

The models are tiny random GGUFs with a vocabulary that has the templates' special tokens, and
chat templates of our own that open the section as Qwen3 (the model opens it itself; the template
shows past reasoning as '<think>\\n…\\n</think>\\n\\n'), QwQ (the generation prompt opens it) and the
DeepSeek-R1 distills (the generation prompt opens it after '<｜Assistant｜>') do."""

import gguf
import numpy as np
import pytest

from hogwild_cpp import protocol as P
from hogwild_cpp.engine import Engine, Settings
from hogwild_cpp.native import Model
from hogwild_cpp.trace import read_trace
from models import gguf_gen

PROBLEM = "What is 12 + 5?"
SPECIAL = ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]

QWEN3_STYLE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' and m.reasoning_content %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + m.reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
QWQ_STYLE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}{%- set answer = m.content.split('</think>')[-1].lstrip('\\n') %}"
    "{{- '<|im_start|>assistant\\n' + answer + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")
R1_DISTILL_STYLE = (
    "{{ bos_token }}{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{%- elif m['role'] == 'assistant' %}{%- set answer = m['content'].split('</think>')[-1] %}"
    "{{ '<｜Assistant｜>' + answer + '<｜end▁of▁sentence｜>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{%- endif %}")
PLAIN_CHATML = ("{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
TEMPLATES = {"qwen3": QWEN3_STYLE, "qwq": QWQ_STYLE, "r1-distill": R1_DISTILL_STYLE}
# how llama.cpp's own renderer ends the generation prompt of each (it knows them as chatml and deepseek3)
ASSISTANT = {"qwen3": "<|im_start|>assistant\n", "qwq": "<|im_start|>assistant\n", "r1-distill": "<｜Assistant｜>"}


def write_template_gguf(path, template: str, seed: int = 3):
    """A one-layer random llama with the byte vocabulary plus SPECIAL (control tokens) and `template`."""
    tokens, scores, types = gguf_gen.vocabulary()
    tokens, scores = tokens + SPECIAL, scores + [0.0] * len(SPECIAL)
    types = types + [int(gguf.TokenType.CONTROL)] * len(SPECIAL)
    n_vocab, n_embd, n_head, n_head_kv, n_layer = len(tokens), 128, 4, 2, 1
    n_ff = gguf_gen.default_n_ff(n_embd)
    writer = gguf.GGUFWriter(path, "llama")
    gguf_gen.add_shape(writer, 8192, n_embd, n_layer, n_ff, n_head, n_head_kv)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(gguf_gen.UNK_ID)
    writer.add_bos_token_id(gguf_gen.BOS_ID)
    writer.add_eos_token_id(gguf_gen.EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)  # as the BPE vocabularies of these families: no space after a special token
    writer.add_chat_template(template)
    rng = np.random.default_rng(seed)
    tensors = {name: np.ones(shape, np.float32) if len(shape) == 1 else gguf_gen.normal_weights(rng, shape, 0.3)
               for name, shape in gguf_gen.tensor_shapes(n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab).items()}
    return gguf_gen.write_all(writer, tensors, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("reasoning")
    return {name: write_template_gguf(d / f"{name}.gguf", t) for name, t in {**TEMPLATES, "chatml": PLAIN_CHATML}.items()}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_the_templates_thinking_section_is_found(name):
    thinking = P.thinking_section(TEMPLATES[name], P.default())
    assert thinking == P.Thinking("<think>\n", "\n</think>\n\n")


def test_the_close_is_taken_from_the_template_where_it_shows_one():
    template = QWEN3_STYLE.replace("'\\n</think>\\n\\n'", "'\\n</think>\\n'")
    assert P.thinking_section(template, P.default()).close == "\n</think>\n"
    # an opening the generation prompt writes its own way wins over the protocol's
    template = QWQ_STYLE.replace("<think>\\n' }}{%- endif %}", "<think>' }}{%- endif %}")
    assert P.thinking_section(template, P.default()).open == "<think>"


def test_no_thinking_section_without_one_in_the_template_unless_asked(tmp_path):
    assert P.thinking_section(PLAIN_CHATML, P.default()) is None
    assert P.thinking_section(None, P.default()) is None
    on, off = (tmp_path / "on.toml"), (tmp_path / "off.toml")
    on.write_text('[thinking]\nmode = "on"\n')
    off.write_text('[thinking]\nmode = "off"\n')
    assert P.thinking_section(None, P.load(on)) == P.Thinking("<think>\n", "\n</think>\n\n")
    assert P.thinking_section(QWQ_STYLE, P.load(off)) is None


def run(path, tmp_path, **kw):
    model = Model(path)
    trace = tmp_path / "t.jsonl"
    engine = Engine(model, Settings(workers=2, temp=0.0, threads=1, n_ctx=8192, max_steps=6, finisher_tokens=4,
                                    **kw), trace_path=trace)
    result = [ev for ev in engine.stream(PROBLEM)][-1].result
    engine.close()
    return model, result, read_trace(trace)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_workers_write_inside_the_thinking_section_and_the_finisher_closes_it(models, tmp_path, name):
    model, result, (header, blocks, records, end) = run(models[name], tmp_path)
    think_end = model.tokenize("</think>", parse_special=True)
    assert len(think_end) == 1
    by_kind = {b["kind"]: b for b in reversed(list(blocks.values()))}
    prompt = model.detokenize(by_kind["prompt"]["tokens"])
    # the rules before the problem in the user message, the assistant's turn, the section opened
    assert prompt.endswith(PROBLEM + ("<|im_end|>\n" if name != "r1-distill" else "") + ASSISTANT[name] + "<think>\n")
    assert header["thinking"] == {"open": "<think>\n", "close": "\n</think>\n\n"}
    assert think_end[0] in header["suppressed"]  # the workers may not close it
    assert all(r["token"] != think_end[0] for r in records if r["worker"] is not None)
    steps = [model.detokenize(b["tokens"]) for b in blocks.values() if b["kind"] == "step"]
    assert steps and not any("</think>" in s for s in steps)
    finisher = model.detokenize(by_kind["finisher"]["tokens"])
    assert "</think>" not in prompt and finisher.count("</think>") == 1
    lead = P.default().finisher_text(P.Thinking("<think>\n", "\n</think>\n\n"))
    assert finisher.startswith(model.detokenize(model.tokenize(lead)))
    assert "\n</think>\n\nThe final answer is \\boxed{" in finisher  # closed, then the answer asked for


def test_a_model_without_a_thinking_section_is_not_kept_from_writing_think_tokens(models, tmp_path):
    model, result, (header, blocks, records, end) = run(models["chatml"], tmp_path)
    think_end = model.tokenize("</think>", parse_special=True)[0]
    assert header["thinking"] is None and think_end not in header["suppressed"]
    prompt = model.detokenize(next(b for b in blocks.values() if b["kind"] == "prompt")["tokens"])
    assert prompt.endswith("<|im_start|>assistant\n")
    finisher = model.detokenize(next(b for b in blocks.values() if b["kind"] == "finisher")["tokens"])
    assert "</think>" not in finisher and "above.\n\nThe final answer is \\boxed{" in finisher
