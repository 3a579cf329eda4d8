"""The protocol: the step-end rule, the answer rule, protocol files (round trips, errors, every text
overridable), the finisher (its token budget, nested braces, who answered), and that no answer is
ever a placeholder copied from our own texts."""

import json

import pytest
from click.testing import CliRunner

import cli
from hogwild_cpp import BadInput, Hogwild, load_protocol
from hogwild_cpp import protocol as P
from hogwild_cpp.engine import Engine, Settings
from hogwild_cpp.layouts import LAYOUTS
from hogwild_cpp.native import Model
from hogwild_cpp.trace import read_trace
from conftest import short_rules_file
from test_layouts import PROBLEM, SHORT_RULES, Script, script_workers

# --- where a step ends ------------------------------------------------------------------


@pytest.mark.parametrize("text, finished", [
    ("Twelve plus five is 17.\n\n", True),
    ("Is it 17?\n\n", True),
    ("It is 17!\n\n", True),
    ("(see above)\n\n", True),
    ("So the list is [1, 2].\n\n", True),
    ("Twelve plus five is 17.", False),            # no paragraph break yet
    ("Twelve plus five is 17.\n", False),
    ("\n\n", False),                               # nothing written
    ("The sum is:\n\n", False),                    # a list or a formula follows
    ("First, the morning batch,\n\n", False),
    ("```python\nprint(12 + 5).\n\n", False),      # inside a code block
    ("```python\nprint(12 + 5)\n```\nThat prints 17.\n\n", True),
    ("~~~\nx = 12 + 5.\n\n", False),               # inside a ~~~ block
    ("~~~\nx = 12 + 5\n~~~\nSo x is 17.\n\n", True),
    ("$$\nx = 12 + 5.\n\n", False),                # inside a $$ display
    ("$$x = 12 + 5$$ gives 17.\n\n", True),
    ("\\[ x = 12 + 5.\n\n", False),                # inside an unclosed \[
    ("\\[ x = 17 \\]\n\n", True),
    ("答えは17です。\n\n", True),                    # non-ASCII sentence ends
    ("本当に17？\n\n", True),
    ("17です！\n\n", True),
    ("Hmm, wait…\n\n", True),
    ("答えは、\n\n", False),
])
def test_a_step_ends_at_a_blank_line_after_a_sentence_end_outside_blocks(text, finished):
    assert P.step_finished(text) is finished


# --- what the answer is -------------------------------------------------------------------


@pytest.mark.parametrize("text, answer", [
    ("so \\boxed{17}.", "17"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),                       # nested braces
    ("first \\boxed{3}, then \\boxed{\\sqrt{2}}", "\\sqrt{2}"),      # the last one
    ("\\boxed{3} and \\boxed{\\frac{1}{2}", "3"),                     # the last *complete* one
    ("\\boxed{}", None),                                             # empty: no answer
    ("\\boxed{ }", None),
    ("no box at all", None),
])
def test_the_answer_is_the_last_complete_box(text, answer):
    assert P.extract_boxed(text) == answer


def test_an_answer_equal_to_our_own_example_is_no_answer():
    assert P.extract_boxed("\\boxed{answer}", exclude={"answer"}) is None
    assert P.extract_boxed("\\boxed{42} \\boxed{answer}", exclude={"answer"}) == "42"


def test_the_shipped_texts_hold_no_answer_a_model_could_copy():
    """Today's bug: every run answered `answer`, copied from `\\boxed{answer}` in our own prompt."""
    p = P.default()
    for n in range(1, 9):
        names = P.default_names(n)
        for layout in LAYOUTS.values():
            assert p.example_answers(names, layout) <= {""}, (n, layout.name)
            assert "\\boxed{}" in p.instructions(names, layout)  # the format is still shown, empty


# --- protocol files -------------------------------------------------------------------------


def test_the_default_file_loads_and_round_trips_through_json(tmp_path):
    default = P.default()
    assert default == load_protocol(P.DEFAULT_FILE)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(default.to_dict()))
    assert load_protocol(path) == default


def test_a_partial_file_overrides_only_its_keys_and_round_trips(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[layout]\nmarker = " <...>\\n\\n"\n[check]\nevery = 64\n[prompt]\nopeners = ["Hey, {name}."]\n')
    p = load_protocol(path)
    assert p["layout.marker"] == " <...>\n\n" and p["check.every"] == 64 and p["prompt.openers"] == ["Hey, {name}."]
    assert p["layout.own_header"] == P.default()["layout.own_header"]
    again = tmp_path / "again.json"
    again.write_text(json.dumps(p.to_dict(), ensure_ascii=False))
    assert load_protocol(again) == p
    # and through the command that prints it
    res = CliRunner().invoke(cli.main, ["protocol", str(path)])
    assert res.exit_code == 0 and json.loads(res.output) == p.to_dict()


def test_hogwild_protocol_prints_the_default_file():
    res = CliRunner().invoke(cli.main, ["protocol"])
    assert res.exit_code == 0 and res.output == P.DEFAULT_FILE.read_text()


@pytest.mark.parametrize("content, name, message", [
    ('[layout]\nmarkr = "x"\n', "p.toml", "unknown key 'layout.markr'"),
    ('[nope]\nx = 1\n', "p.toml", "unknown key 'nope.x'"),
    ('[layout\nmarker = "x"\n', "p.toml", "not valid TOML"),
    ('{"layout": {"marker": 3}}', "p.json", "layout.marker must be a string"),
    ('{"layout": ', "p.json", "not valid JSON"),
    ('[check]\nevery = -1\n', "p.toml", "check.every must be between 0 and"),
    ('[check]\nevery = "often"\n', "p.toml", "check.every must be an integer"),
    ('[finisher]\ntokens = true\n', "p.toml", "finisher.tokens must be an integer"),
    ('[prompt]\ninstructions_in = "assistant"\n', "p.toml", "prompt.instructions_in must be one of user, system"),
    ('[prompt]\nopeners = "Hi"\n', "p.toml", "prompt.openers must be a list of strings"),
    ('[steps]\nprefix = "{nmae} [{step}]: "\n', "p.toml", "steps.prefix has an unknown placeholder {nmae}"),
    ('[thinking]\nmode = "maybe"\n', "p.toml", "thinking.mode must be one of auto, on, off"),
    ('', "missing.toml", "no such file"),
])
def test_a_bad_protocol_file_is_a_one_line_error_with_exit_code_2(tmp_path, content, name, message):
    path = tmp_path / name
    if name != "missing.toml":
        path.write_text(content)
    with pytest.raises(BadInput, match=message.replace("{", r"\{").replace("(", r"\(")):
        load_protocol(path)
    prompt = tmp_path / "problem.txt"
    prompt.write_text(PROBLEM)
    res = CliRunner().invoke(cli.main, ["run", str(P.DEFAULT_FILE), str(prompt), "--protocol", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: protocol ") and message in lines[0], res.output


def test_a_brace_after_a_letter_or_a_caret_is_text_not_a_placeholder():
    assert P.fill("\\boxed{answer} x^{n} {n}", n=3) == "\\boxed{answer} x^{n} 3"


# --- every text the engine writes comes from the protocol ------------------------------------

EVERY_TEXT = """
[steps]
prefix = "<{name}#{step}> "
[layout]
history_header = "=DONE=\\n\\n"
others_header = "=OTHERS=\\n\\n"
marker = " =MORE=\\n\\n"
own_header = "=MINE=\\n\\n"
own_workspace_header = "=MYSPACE=\\n\\n"
[prompt]
instructions_in = "system"
team = "=TEAM {names}= {layout}"
solo = "=SOLO="
user = "=USER= {problem}"
user_with_instructions = "=UWI= {instructions} {problem}"
plain = "=PLAIN= {instructions} =P= {problem} =S=\\n"
openers = ["=OPEN0 {name}=", "=OPEN1 {name}="]
[prompt.layouts]
combined = "=COMBINED {marker}="
stepwise = "=STEPWISE="
contiguous = "=CONTIGUOUS {own_workspace_header}="
[check]
every = 8
question = "=CHECK {name}= "
[finisher]
text = "=FIN={close}=BOX= \\\\boxed{"
tokens = 3
separator = "=SEP="
"""


@pytest.mark.parametrize("layout", ["combined", "contiguous"])
def test_every_text_the_engine_writes_comes_from_the_protocol_file(one_layer, tmp_path, layout):
    path = tmp_path / "every.toml"
    path.write_text(EVERY_TEXT)
    model = Model(one_layer)
    trace = tmp_path / "t.jsonl"
    engine = Engine(model, Settings(workers=2, layout=layout, temp=0.0, threads=1, n_ctx=8192, max_steps=40,
                                    protocol=load_protocol(path)), trace_path=trace)
    script_workers(engine, ["Alice counts.\n\n", "Bob adds it up.\n\n"])
    result = [ev for ev in engine.stream(PROBLEM)][-1].result
    engine.close()
    header, blocks, records, end = read_trace(trace)
    written = lambda s: model.detokenize(model.tokenize(s))  # noqa: E731 (a text as its own block holds it)
    text = {b["kind"] + ":" + (b["owner"] or ""): model.detokenize(b["tokens"]) for b in blocks.values()
            if b["kind"] != "step"}
    steps = [model.detokenize(b["tokens"]).lstrip() for b in blocks.values() if b["kind"] == "step"]
    # no chat template: the plain prompt, the rules and the layout text filled in
    want = "=PLAIN= =TEAM Alice and Bob= " + ("=COMBINED =MORE== =P= " if layout == "combined"
                                             else "=CONTIGUOUS =MYSPACE== =P= ")
    assert want + PROBLEM + " =S=\n" in text["prompt:"]
    assert text["marker:Alice"] == written(" =MORE=\n\n") == text["marker:Bob"]
    if layout == "combined":
        assert text["history-header:"] == written("=DONE=\n\n")
        assert text["others-header:"] == written("=OTHERS=\n\n")
        assert text["own-header:Alice"] == written("=MINE=\n\n")
    else:
        assert text["own-header:Alice"] == written("=MYSPACE=\n\n")
    assert steps[0].startswith("<Alice#1> =OPEN0 Alice=") and steps[1].startswith("<Bob#1> =OPEN1 Bob=")
    assert any(s.startswith("<Alice#2> ") or s.startswith("<Bob#2> ") for s in steps)
    assert any("=CHECK " in s for s in steps)  # every 8 tokens of finished steps
    assert text["finisher:"].lstrip().startswith("=FIN==SEP==BOX= \\boxed{")
    assert 0 < sum(r["worker"] is None for r in records) <= 3 and header["finisher_tokens"] == 3
    assert header["protocol"]["steps"]["prefix"] == "<{name}#{step}> " and header["instructions_in"] == "system"
    model.close()


def test_the_rules_go_in_the_user_message_by_default_or_in_the_system_message(chat_model):
    model = Model(chat_model)
    names, layout = ["Alice", "Bob"], LAYOUTS["combined"]
    rules = P.default().instructions(names, layout)
    user = P.chat_prompt(model, names, layout, PROBLEM)
    system = P.chat_prompt(model, names, layout, PROBLEM, instructions_in="system")
    model.close()
    assert user.startswith("<|im_start|>user\n" + rules) and "<|im_start|>system" not in user
    assert user.endswith(PROBLEM + "<|im_end|>\n<|im_start|>assistant\n")
    assert system.startswith("<|im_start|>system\n" + rules + "<|im_end|>\n<|im_start|>user\n" + PROBLEM)


def test_instructions_in_and_finisher_tokens_flags_override_the_protocol(one_layer, tmp_path):
    trace = tmp_path / "t.jsonl"
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-n", "3", "-t", "1", "--temp", "0",
                                        "--instructions-in", "system", "--finisher-tokens", "5",
                                        "--check-every", "0", "--trace", str(trace)], input=PROBLEM)
    assert res.exit_code == 0, res.output
    header = read_trace(trace)[0]
    assert header["instructions_in"] == "system" and header["finisher_tokens"] == 5 and header["check_every"] == 0
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "--instructions-in", "assistant"], input=PROBLEM)
    assert res.exit_code == 2 and "'assistant' is not one of 'user', 'system'" in res.output


# --- the finisher and who answered --------------------------------------------------------------


class GreedyScript(Script):
    """Stands in for the finisher's greedy sampler."""

    def __init__(self, model, text):
        super().__init__(model.tokenize(text))


def finisher_run(one_layer, tmp_path, monkeypatch, finisher_says, workers_say=("Alice thinks.\n\n", "Bob too.\n\n"),
                 protocol=None, **kw):
    import hogwild_cpp.engine as E

    model = Model(one_layer)
    trace = tmp_path / "t.jsonl"
    engine = Engine(model, Settings(workers=2, temp=0.0, threads=1, n_ctx=8192, max_steps=kw.pop("max_steps", 12),
                                    protocol=protocol or load_protocol(short_rules_file(tmp_path)), **kw), trace_path=trace)
    script_workers(engine, list(workers_say))
    monkeypatch.setattr(E, "Sampler", lambda *a, **k: GreedyScript(model, finisher_says))
    result = [ev for ev in engine.stream(PROBLEM)][-1].result
    engine.close()
    return model, result, read_trace(trace)


def test_the_finisher_keeps_nested_braces_and_stops_at_the_closing_one(one_layer, tmp_path, monkeypatch):
    model, result, (header, blocks, records, end) = finisher_run(one_layer, tmp_path, monkeypatch,
                                                                 "\\frac{1}{2}} and then more text", finisher_tokens=40)
    assert result.answer == "\\frac{1}{2}" and result.reason == "budget"
    assert result.answer_source == "finisher" and result.answer_worker is None
    assert result.finisher.strip() == "\\frac{1}{2}}"  # it stopped at the brace that closes the box
    assert end["answer"] == "\\frac{1}{2}" and end["answer_source"] == "finisher"
    fin = [r for r in records if r["worker"] is None]
    assert len(fin) == len(model.tokenize("\\frac{1}{2}}"))


def test_the_finisher_writes_at_most_finisher_tokens(one_layer, tmp_path, monkeypatch):
    model, result, (header, blocks, records, end) = finisher_run(one_layer, tmp_path, monkeypatch,
                                                                 "\\frac{1}{2}}", finisher_tokens=4)
    assert result.answer is None and result.answer_source is None  # the box never closed
    assert sum(r["worker"] is None for r in records) == 4


def test_finisher_tokens_0_means_no_finisher(one_layer, tmp_path, monkeypatch):
    model, result, (header, blocks, records, end) = finisher_run(one_layer, tmp_path, monkeypatch, "7}",
                                                                 finisher_tokens=0)
    assert result.answer is None and not any(r["worker"] is None for r in records)
    assert not any(b["kind"] == "finisher" for b in blocks.values())


def test_an_answer_a_worker_writes_is_reported_as_the_workers(one_layer, tmp_path, monkeypatch):
    model, result, (header, blocks, records, end) = finisher_run(
        one_layer, tmp_path, monkeypatch, "5}", workers_say=("It is \\boxed{\\frac{17}{1}}.\n\n", "Hmm.\n\n"),
        max_steps=60)
    assert result.reason == "answer" and result.answer == "\\frac{17}{1}"
    assert result.answer_source == "worker" and result.answer_worker == "Alice"
    assert end["answer_source"] == "worker" and end["answer_worker"] == "Alice"
    assert not any(r["worker"] is None for r in records)  # no finisher


def test_a_placeholder_in_the_rules_is_never_the_answer(one_layer, tmp_path, monkeypatch):
    """A protocol that shows \\boxed{answer} (as ours once did): a finisher or worker copying it answers nothing."""
    path = tmp_path / "old.toml"
    path.write_text(SHORT_RULES.replace('solo = "Solve it in steps."', 'solo = "End with \\\\boxed{answer}."')
                    .replace("share one workspace.", "share one workspace. Write \\\\boxed{answer}."))
    protocol = load_protocol(path)
    assert "answer" in protocol.example_answers(["Alice", "Bob"], LAYOUTS["combined"])
    model, result, _ = finisher_run(one_layer, tmp_path, monkeypatch, "answer}",
                                    workers_say=("So \\boxed{answer}.\n\n", "Done.\n\n"), protocol=protocol,
                                    finisher_tokens=8, max_steps=40)
    assert result.answer is None and result.answer_source is None


def test_the_cli_json_and_api_say_who_answered(one_layer, tmp_path):
    """A budget run of the random model: the finisher writes; the CLI line, the JSON result, the trace
    and the Python result agree on the source."""
    out, trace = tmp_path / "out.json", tmp_path / "t.jsonl"
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-n", "6", "--temp", "0", "-t", "1",
                                        "--finisher-tokens", "4", "--output", str(out), "--trace", str(trace)],
                             input=PROBLEM)
    assert res.exit_code == 0, res.output
    data, end = json.loads(out.read_text()), read_trace(trace)[3]
    line = next(ln for ln in res.output.splitlines() if ln.startswith("answer: "))
    assert data["answer_source"] == end["answer_source"]
    if data["answer"] is not None:
        assert data["answer_source"] == "finisher" and line.endswith("(stop: budget; forced by the finisher)")
    else:
        assert data["answer_source"] is None and line == "answer: (none)  (stop: budget)"
    h = Hogwild(one_layer, workers=2, max_steps=4, temp=0.0, threads=1, finisher_tokens=2)
    result = h.run(PROBLEM)
    h.close()
    assert result.answer_source in (None, "finisher") and result.answer != "answer"


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    from models import gguf_gen

    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("protocol") / "one.gguf", n_embd=128, n_head=4,
                                     n_head_kv=2, n_layer=1, seed=3, weight_std=0.3, n_ctx_train=8192)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    from models import gguf_gen

    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("protocol") / "chat.gguf", n_embd=64, n_head=2,
                                     n_head_kv=1, n_layer=1, seed=3, chat_template=template)
