"""The end-to-end loop: `hogwild bench --e2e` times the engine's own loop; native sampling of every worker
in one call gives the same run as before; results keep each worker's last sampled token."""

import json

import pytest
from click.testing import CliRunner

import cli
from hogwild_cpp.engine import DoneEvent, Engine, StepEvent, TokenEvent
from hogwild_cpp.native import Model
from hogwild_cpp.settings import Settings
from models import gguf_gen

PROBLEM = "Add 12 and 5."


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("e2e") / "one.gguf", n_embd=128, n_head=4, n_head_kv=2,
                                     n_layer=1, seed=3, weight_std=0.3, n_ctx_train=8192)


def events(model_path, **kw):
    model = Model(model_path)
    engine = Engine(model, Settings(n_ctx=8192, threads=2, temp=0.0, **kw))
    try:
        return list(engine.stream(PROBLEM))
    finally:
        engine.close()
        model.close()


def test_bench_e2e_times_the_engine_loop_for_each_worker_count(model_path, tmp_path):
    out = tmp_path / "e2e.json"
    res = CliRunner().invoke(cli.main, ["bench", str(model_path), "--e2e", "-np", "1,2,4", "--steps", "30",
                                        "--step-tokens", "8", "-t", "2", "-c", "8192", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["e2e_rows"]
    assert [r["workers"] for r in rows] == [1, 2, 4]
    for r in rows:
        assert r["steps"] == 30 and r["tokens"] > 0 and r["tok_per_s"] > 0
        # decoding is part of a step: the loop is never faster than its decodes
        assert 0 < r["decode_ms_per_step"] <= r["ms_per_step"] and r["loop_overhead"] >= 1.0
        assert 0 <= r["graphs_reused"] <= 1.0 + 1e-9
        # a step ends every 8 sampled tokens: some steps decode the next step's label, most one token a worker;
        # the two kinds of step add up to the run
        assert 0 < r["boundary_steps"] < r["steps"] / 2 and 0 < r["boundary_share"] < 1
        total, plain_steps = r["ms_per_step"] * r["steps"], r["steps"] - r["boundary_steps"]
        # the three fields are rounded to 3 places (half a unit each): bound what that rounding can add up to,
        # since sub-millisecond steps on a tiny model make it larger than any relative tolerance would allow
        rounding = 5e-4 * (total + plain_steps + (1 + r["boundary_share"]) * r["steps"]) + 1e-9
        assert r["boundary_share"] * total + r["plain_ms_per_step"] * plain_steps == \
            pytest.approx(total, abs=rounding)
    assert rows[0]["speedup_vs_1"] == 1.0
    for r in rows:  # the bench's steps at the run's W and mean view length, in the same process
        assert r["final_ctx"] > r["view_ctx"] > 0 and 0 < r["bench_single_ms"]
        assert 0 < r["bench_hogwild_ms"] and 0 < r["bench_batched_ms"]
        # ratios of the row's own numbers, rounded to 3 places
        assert r["run_vs_bench"] == pytest.approx(r["ms_per_step"] / r["bench_hogwild_ms"], abs=5e-4)
        assert r["plain_vs_bench"] == pytest.approx(r["plain_ms_per_step"] / r["bench_hogwild_ms"], abs=5e-4)
        assert r["bound_hogwild"] == pytest.approx(r["workers"] * r["bench_single_ms"] / r["bench_hogwild_ms"],
                                                   abs=5e-4)
        assert r["bound_batched"] == pytest.approx(r["workers"] * r["bench_single_ms"] / r["bench_batched_ms"],
                                                   abs=5e-4)
    # W workers sample W tokens a step, less the steps on which a worker commits (every 8 tokens here)
    assert rows[2]["tokens"] > 3 * rows[0]["tokens"]
    assert "| workers |" in res.output and "loop_overhead" in res.output


def test_bench_e2e_refuses_both_flash_attention_settings(model_path):
    res = CliRunner().invoke(cli.main, ["bench", str(model_path), "--e2e", "-fa", "both"])
    assert res.exit_code == 2 and "Traceback" not in res.output and "one flash-attention setting" in res.output


def test_bench_step_tokens_ends_a_step_every_n_sampled_tokens(model_path):
    evs = events(model_path, workers=2, max_steps=40, finisher_tokens=0, check_every=0, bench_step_tokens=5)
    steps = [e for e in evs if isinstance(e, StepEvent)]
    assert len(steps) >= 2 * 5
    for name in ("Alice", "Bob"):
        tokens = [e for e in evs if isinstance(e, TokenEvent) and e.worker == name]
        finished = [e for e in steps if e.worker == name]
        # five sampled tokens a step, and a commit step between steps
        assert len(tokens) in range(5 * len(finished), 5 * len(finished) + 6)


def test_result_texts_keep_each_workers_last_sampled_token(model_path):
    """At the budget the last sampled tokens were never decoded; they still belong to the workers' texts."""
    evs = events(model_path, workers=3, max_steps=12, finisher_tokens=0)
    result = next(e.result for e in evs if isinstance(e, DoneEvent))
    for name, text in result.texts.items():
        last = [e.text for e in evs if isinstance(e, TokenEvent) and e.worker == name][-1]
        assert text.endswith(last), (name, text[-40:], last)
    assert 0 < result.decode_s <= result.generate_s


def test_bench_cut_short_keeps_the_rows_it_measured(model_path, tmp_path, monkeypatch):
    """Each row is printed, and the JSON rewritten, as soon as it is measured: a bench stopped by Ctrl-C (or
    a time limit) after W=1 keeps W=1's row and exits 130."""
    from hogwild_cpp import bench

    compare, calls = bench._compare, []

    def compare_then_stop(row, *args, **kwargs):
        calls.append(row.workers)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return compare(row, *args, **kwargs)

    monkeypatch.setattr(bench, "_compare", compare_then_stop)
    out = tmp_path / "e2e.json"
    res = CliRunner().invoke(cli.main, ["bench", str(model_path), "--e2e", "-np", "1,2", "--steps", "10",
                                        "--step-tokens", "4", "-t", "1", "-c", "8192", "--json", str(out)])
    assert res.exit_code == 130 and "interrupted" in res.stderr and "Traceback" not in res.output, res.output
    assert [r["workers"] for r in json.loads(out.read_text())["e2e_rows"]] == [1]
    table = [line for line in res.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 3 and "| workers |" in table[0] and table[2].startswith("| cpu |")
