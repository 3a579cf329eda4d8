"""hogwild eval: the answer rule, resuming, the outputs, and a short run on the default model."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from cli import main
from hogwild_cpp import eval as ev
from hogwild_cpp.default_model import default_model
from hogwild_cpp.engine import Engine
from hogwild_cpp.native import Model
from hogwild_cpp.settings import Settings
from conftest import SHORT_RULES, short_rules_file





@pytest.fixture
def tiny_settings(tmp_path):
    rules = tmp_path / "short.toml"
    rules.write_text(SHORT_RULES)
    return Settings(threads=1, n_ctx=4096, finisher_tokens=4, check_every=0, protocol=str(rules))


@pytest.mark.parametrize("answer, gold, same", [
    ("\\frac{1}{2}", "0.5", True), ("\\dfrac{5}{8}", "5/8", True), ("\\tfrac{3}{4}", "0.75", True),
    ("\\frac12", "1/2", True), ("-\\frac{3}{4}", "-0.75", True), ("(3)/(4)", "0.75", True),
    ("1,234", "1234", True), ("1{,}000", "1000", True), ("$1,234.00", "1234", True), ("\\$60", "60", True),
    ("12 apples", "12", True), ("21 dozen", "21", True), ("\\text{9 apples}", "9", True), ("60°", "60", True),
    ("x = 5", "5", True), ("50\\%", "50", True), ("50%", "50", True), ("3.50", "3.5", True),
    ("\\boxed{42}", "42", True), ("#### 72", "72", True),
    ("A worked solution ... so \\boxed{\\frac{5}{8}}.", "0.625", True),
    ("Paris", "paris", True), ("0.333", "1/3", False), ("10", "100", False), ("The answer is 7", "7", False),
    (None, "1", False), ("", "0", False), ("5", None, False),
])
def test_answer_rule(answer, gold, same):
    assert ev.same_answer(answer, gold) is same


def test_majority_vote():
    assert ev.vote(["1", "2", "2", None]) == "2"
    assert ev.vote([None, None]) is None
    assert ev.vote(["3", "4"]) == "3"  # a tie: the first given
    assert ev.vote(["0.5", "1/2", "2"]) == "0.5"  # equal answers vote together


def test_data_fields_and_errors(tmp_path):
    assert len(ev.load_data("builtin")) >= 12
    f = tmp_path / "d.jsonl"
    f.write_text('{"question": "q1", "final_answer": 3}\n\n{"problem": "q2", "solution": "so \\\\boxed{4}"}\n')
    items = ev.load_data(f)
    assert [(i.problem, i.answer) for i in items] == [("q1", "3"), ("q2", "so \\boxed{4}")]
    assert ev.same_answer("4", items[1].answer)
    f.write_text('{"text": "no fields"}\n')
    with pytest.raises(ev.BadInput, match="needs a problem"):
        ev.load_data(f)
    with pytest.raises(ev.BadInput, match="no such file"):
        ev.load_data(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("layout, workers", [("combined", 2), ("contiguous", 2), ("stepwise", 1)])
def test_the_finisher_at_a_budget_leaves_the_run_unchanged(one_layer, layout, workers):
    """answer_now mid-run (on the spare sequence): the run's texts, final finisher and transcript are
    those of a run without it, token for token (greedy)."""
    model = Model(one_layer)
    s = Settings(workers=workers, layout=layout, temp=0.0, threads=1, n_ctx=4096, max_steps=10, finisher_tokens=4,
                 bench_step_tokens=3, check_every=0)
    results, finishers = [], []
    for probe in (False, True):
        e = Engine(model, s, spare=probe)
        if probe:
            e.on_step = lambda eng, k: finishers.append(eng.answer_now()) if k in (2, 5, 8) else None
        results.append([x for x in e.stream("What is 2+3?")][-1].result)
        e.close()
    a, b = results
    assert (a.texts, a.finisher, a.transcript) == (b.texts, b.finisher, b.transcript)
    assert len(finishers) == 3 and all(f[3] for f in finishers)  # the finisher wrote at each budget
    model.close()


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_resume_after_an_interrupted_run(one_layer, tiny_settings, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = ev.evaluate_item
    calls = []

    def interrupted(*a, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(ev, "evaluate_item", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ev.run_eval(one_layer, "builtin", [4, 8], [1, 2], out, tiny_settings, limit=3, progress=False)
    first = _lines(out / "results.jsonl")
    assert len(first) == 3
    with open(out / "results.jsonl", "a") as f:
        f.write('{"id": "cut sh')  # a line cut short by a crash
    monkeypatch.setattr(ev, "evaluate_item", real)
    summary = ev.run_eval(one_layer, "builtin", [4, 8], [1, 2], out, tiny_settings, limit=3, progress=False)
    recs = ev.read_results(out / "results.jsonl")
    keys = [(r["id"], r["config"]) for r in recs]
    assert len(keys) == len(set(keys)) == 6  # nothing lost, nothing twice
    assert recs[:3] == first  # the finished ones were kept, not rerun
    assert all(r["n"] == 3 for r in summary["rows"])
    # a third run has nothing left to do
    monkeypatch.setattr(ev, "evaluate_item", lambda *a, **kw: pytest.fail("nothing should run"))
    ev.run_eval(one_layer, "builtin", [4, 8], [1, 2], out, tiny_settings, limit=3, progress=False)
    # another seed in the same --out: nothing is reused
    again = []
    monkeypatch.setattr(ev, "evaluate_item", lambda *a, **kw: again.append(1) or real(*a, **kw))
    ev.run_eval(one_layer, "builtin", [4], [1], out, replace(tiny_settings, seed=1), limit=2, progress=False)
    assert len(again) == 2


def test_plot_and_report_from_a_run_on_a_generated_model(one_layer, tiny_settings, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "What is <b>2+3</b>?", "answer": "5"}\n{"question": "1+1?", "answer": "2"}\n')
    out = tmp_path / "out"
    summary = ev.run_eval(one_layer, data, [4, 8], [1, 2], out, tiny_settings, baseline="independent",
                          progress=False)
    assert summary["configs"] == ["hogwild-np1", "hogwild-np2", "independent-np2"]
    assert [(r["config"], r["budget"], r["n"]) for r in summary["rows"]][:2] == [("hogwild-np1", 4, 2),
                                                                                 ("hogwild-np1", 8, 2)]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "What is &lt;b&gt;2+3&lt;/b&gt;?" in page
    assert "Alice" in page and "Bob" in page and "run2" in page
    assert "the whole transcript" in page
    assert json.loads((out / "summary.json").read_text())["budgets"] == [4, 8]
    assert (out / "summary.csv").read_text().startswith("config,workers,budget,correct,n,accuracy")
    for rec in _lines(out / "results.jsonl"):
        assert set(rec["per_budget"]) == {"4", "8"}
        for entry in rec["per_budget"].values():
            assert entry["correct"] == ev.same_answer(entry["answer"], rec["gold"])
        if rec["kind"] == "independent":
            assert all(len(e["votes"]) == 2 for e in rec["per_budget"].values())


def test_eval_end_to_end_on_the_default_model(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["eval", str(default_model()), "builtin", "--budgets", "4,8", "-np", "1,2",
                                  "--limit", "2", "-t", "1", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "| hogwild-np2 | 8 |" in r.output
    recs = _lines(out / "results.jsonl")
    assert len(recs) == 4
    for rec in recs:
        for entry in rec["per_budget"].values():
            assert entry["source"] in ("worker", "finisher", None)
    assert (out / "report.html").exists() and (out / "accuracy.png").exists()


def test_eval_system_prompt_opens_every_runs_prompt_and_keys_the_resume(one_layer, tmp_path, run_prompts):
    """-sys as on run: every run's prompt opens with it (no chat template here: the text); a rerun with
    another -sys, or none, runs afresh."""
    prompts = run_prompts
    out = tmp_path / "out"
    args = ["eval", str(one_layer), "builtin", "--limit", "1", "--budgets", "2", "-np", "1,2", "--temp", "0",
            "-t", "1", "-c", "4096", "--finisher-tokens", "2", "--protocol", str(short_rules_file(tmp_path)),
            "--out", str(out), "--quiet"]
    r = CliRunner().invoke(main, [*args, "-sys", "Answer in French."])
    assert r.exit_code == 0, r.output
    assert len(prompts) == 2 and all(p.startswith("Answer in French.\n\n") for p in prompts), prompts
    assert [rec["setup"]["system_prompt"] for rec in _lines(out / "results.jsonl")] == ["Answer in French."] * 2
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert len(prompts) == 4 and not any(p.startswith("Answer in French.") for p in prompts[2:])


def test_eval_refuses_bad_input_in_one_line(tmp_path, one_layer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    r = CliRunner().invoke(main, ["eval", str(one_layer), str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not JSON" in r.output


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path, one_layer, monkeypatch):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "run_eval", interrupted)
    r = CliRunner().invoke(main, ["eval", str(one_layer), "builtin", "--out", str(tmp_path / "o")])
    assert r.exit_code == 130 and "rerun to resume" in r.output
