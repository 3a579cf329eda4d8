"""Each layout's views, as the trace records them, have the block order documented in
hogwild_cpp/layouts.py and docs/trace.md, for W = 1..8; the finisher reads everyone's text.

The workers are scripted (each "samples" the tokens of a fixed text, whatever the logits), so steps
finish at known, different lengths and the history fills; the model is a one-layer random GGUF, so
a W = 8 trace also replays exactly with stock decoding."""

import re

import numpy as np
import pytest

from hogwild_cpp import load_protocol
from hogwild_cpp.engine import Engine, Settings
from hogwild_cpp.native import Context, ContextConfig, Model
from hogwild_cpp.protocol import default_names
from hogwild_cpp.trace import read_trace, view_tokens
from conftest import SHORT_RULES

PROBLEM = "A baker makes 12 muffins in the morning and 5 more in the afternoon. How many muffins?"




@pytest.fixture(scope="module")
def short_rules(tmp_path_factory):
    path = tmp_path_factory.mktemp("protocol") / "short.toml"
    path.write_text(SHORT_RULES)
    return load_protocol(path)


class Script:
    """A worker's sampler that writes a fixed text, token after token, whatever the logits."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.i = tokens, 0

    def sample(self, logits) -> int:
        tok = self.tokens[self.i % len(self.tokens)]
        self.i += 1
        return tok

    def close(self) -> None:
        pass


def script_workers(engine: Engine, texts: list[str]) -> None:
    """Worker i writes texts[i] over and over: the engine samples every worker in one native call
    (Context.sample), which is replaced by the scripts, keyed by each worker's sampler."""
    scripts = {id(w.sampler): Script(engine.model.tokenize(text)) for w, text in zip(engine.workers, texts)}
    engine.ctx.sample = lambda outputs, samplers, *a, **k: [scripts[id(s)].sample(None) for s in samplers]


def step_texts(n: int) -> list[str]:
    """Worker i's steps: a sentence of its own length, then a blank line (so steps end at different times)."""
    return [f"W{i} adds {'ab' * (i % 3 + 1)}.\n\n" for i in range(n)]


def scripted_run(model_path, tmp_path, workers, layout, protocol, max_steps=50, texts=None, **kw):
    model = Model(model_path)
    trace = tmp_path / f"{layout}-{workers}.jsonl"
    s = Settings(workers=workers, layout=layout, temp=0.0, threads=1, n_ctx=8192, max_steps=max_steps,
                 cache_type_k="f32", cache_type_v="f32", flash_attn="off", protocol=protocol, **kw)
    engine = Engine(model, s, trace_path=trace)
    script_workers(engine, texts or step_texts(workers))
    result = [ev for ev in engine.stream(PROBLEM)][-1].result
    engine.close()
    return model, result, read_trace(trace)


def pattern(layout: str, names: list[str], me: str | None) -> re.Pattern:
    """The documented block order of `me`'s view (me None: the finisher's), as a regex over
    'kind:owner;' items (owner empty for shared blocks)."""
    others = [n for n in names if n != me]
    step = r"step:\w+;"
    if layout == "contiguous":
        if me is None:
            return re.compile("prompt:;" + "".join(f"(step:{y};)+marker:{y};" for y in names) + "finisher:;$")
        return re.compile("prompt:;" + "".join(f"(step:{y};)+marker:{y};" for y in others)
                          + f"own-header:{me};(step:{me};)+$")
    head = f"prompt:;history-header:;({step})*"
    if me is None:
        return re.compile(head + "others-header:;" + "".join(f"step:{y};marker:{y};" for y in names) + "finisher:;$")
    if layout == "stepwise":
        return re.compile(head + f"step:{me};$")
    return re.compile(head + "others-header:;" + "".join(f"step:{y};marker:{y};" for y in others)
                      + f"own-header:{me};step:{me};$")


def check_trace_structure(layout: str, names: list[str], trace) -> dict:
    header, blocks, records, end = trace
    seen = {"records": 0, "history": 0, "finisher": 0}
    last_history: list[int] = []
    for rec in records:
        items = [(bid, n, blocks[bid]["kind"], blocks[bid]["owner"] or "") for bid, n in rec["view"]]
        text = "".join(f"{kind}:{owner};" for _, _, kind, owner in items)
        assert pattern(layout, names, rec["worker"]).match(text), (rec["worker"], text)
        seen["records"] += 1
        seen["finisher"] += rec["worker"] is None
        if layout == "contiguous":  # a workspace: its steps in order, all but the last finished
            for owner in names:
                mine = [(bid, n) for bid, n, kind, o in items if kind == "step" and o == owner]
                assert [b for b, _ in mine] == sorted(b for b, _ in mine)
                assert all(n == len(blocks[b]["tokens"]) for b, n in mine[:-1])
        else:  # the history: finished steps, in finishing order, only ever growing
            if layout == "stepwise" and rec["worker"] is not None:
                end_of_history = len(items) - 1
            else:
                end_of_history = next(i for i, it in enumerate(items) if it[2] == "others-header")
            history = [bid for bid, _, _, _ in items[2:end_of_history]]
            assert all(n == len(blocks[b]["tokens"]) for b, n, _, _ in items[2:2 + len(history)])
            common = min(len(history), len(last_history))
            assert history[:common] == last_history[:common]
            if len(history) >= len(last_history):
                last_history = history
            seen["history"] = max(seen["history"], len(history))
    return seen


@pytest.mark.parametrize("layout", ["combined", "stepwise", "contiguous"])
@pytest.mark.parametrize("workers", range(1, 9))
def test_each_layouts_views_have_their_documented_block_order(one_layer, short_rules, tmp_path, layout, workers):
    model, result, trace = scripted_run(one_layer, tmp_path, workers, layout, short_rules)
    seen = check_trace_structure(layout, default_names(workers), trace)
    assert seen["records"] == sum(result.generated.values()) + seen["finisher"]
    assert seen["finisher"] > 0  # the budget ran out without an answer: the finisher wrote
    if layout != "contiguous":
        assert seen["history"] >= workers  # every worker finished steps, and they joined the history
    assert all(t.count("\n\n") >= 2 for t in result.texts.values())  # several finished steps each


@pytest.mark.parametrize("layout", ["combined", "stepwise", "contiguous"])
def test_eight_scripted_workers_replay_exactly_with_stock_decoding(one_layer, short_rules, tmp_path, layout):
    """Exactness with every header and marker in place: each recorded view, decoded afresh by stock
    llama.cpp, gives the logprob the trace recorded (one layer: every view is exact)."""
    model, result, (header, blocks, records, end) = scripted_run(one_layer, tmp_path, 8, layout, short_rules,
                                                                 max_steps=12)
    ctx = Context(model, ContextConfig(n_ctx=8192, n_batch=512, n_seq_max=1, n_threads=1, hogwild=False,
                                       type_k="f32", type_v="f32", flash_attn="off"))
    for rec in records:  # scripted tokens are not the argmax: the logprobs are compared
        toks = view_tokens(blocks, rec["view"])
        ctx.clear()
        logits = ctx.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])[0]
        m = logits.max()
        lp = float(logits[rec["token"]] - m - np.log(np.exp(logits - m).sum()))
        assert abs(lp - rec["logprob"]) <= 5e-4, rec  # f32: a one-token decode against a prefill
    ctx.close()


@pytest.mark.parametrize("layout", ["combined", "stepwise", "contiguous"])
def test_the_finisher_reads_every_workers_text(one_layer, short_rules, tmp_path, layout):
    """Whatever the layout shows each worker (stepwise: only its own current step), the finisher's view
    holds the prompt, the history and every worker's current step, each followed by its marker."""
    model, result, (header, blocks, records, end) = scripted_run(one_layer, tmp_path, 3, layout, short_rules,
                                                                 max_steps=30)
    fin = [r for r in records if r["worker"] is None]
    assert fin and result.answer_source in (None, "finisher")
    view = dict((b, n) for b, n in fin[0]["view"])
    steps = [b for b in blocks.values() if b["kind"] == "step"]
    for name in default_names(3):
        mine = [b for b in steps if b["owner"] == name]
        current = max(mine, key=lambda b: b["id"])
        assert view.get(current["id"]) == len(current["tokens"])  # every worker's unfinished step, whole
        marker = next(b for b in blocks.values() if b["kind"] == "marker" and b["owner"] == name)
        order = [b for b, _ in fin[0]["view"]]
        assert order.index(marker["id"]) == order.index(current["id"]) + 1
        if layout == "contiguous":  # and every finished step of its workspace
            assert all(view.get(b["id"]) == len(b["tokens"]) for b in mine)
    assert next(iter(view)) == next(b["id"] for b in blocks.values() if b["kind"] == "prompt")
    if layout != "contiguous":  # the whole history
        finished = [b["id"] for b in steps if b["id"] in view and b["id"] not in
                    {max((s for s in steps if s["owner"] == n), key=lambda s: s["id"])["id"] for n in default_names(3)}]
        assert finished and all(view[b] == len(blocks[b]["tokens"]) for b in finished)
    # a stepwise worker never sees another's unfinished step; the finisher does
    if layout == "stepwise":
        last = [r for r in records if r["worker"] == "Alice"][-1]
        bob_current = max((b for b in steps if b["owner"] == "Bob"), key=lambda b: b["id"])["id"]
        assert bob_current not in dict(map(tuple, last["view"]))
