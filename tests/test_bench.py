"""`hogwild bench`: the rows it reports are the ones the benchmark issue asks for, and consistent."""

import json

import pytest
from click.testing import CliRunner

import cli
from models import gguf_gen

KEYS = {"device", "model", "workers", "ctx", "hogwild_step_ms", "batched_step_ms", "single_step_ms",
        "reprefill_step_ms", "overhead_ratio", "speedup_vs_single", "kv_cells", "unique_tokens"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("bench") / "tiny.gguf", n_embd=64, n_head=2,
                                     n_head_kv=1, n_layer=2, seed=3)


@pytest.mark.parametrize("flash", ["off", "both"])
def test_bench_reports_every_row_in_markdown_and_json(tiny, tmp_path, flash):
    """Every (context, flash setting, workers) row, hogwild and baselines under the same setting."""
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(cli.main, ["bench", str(tiny), "-np", "1,2", "--ctx", "96,160", "--steps", "2",
                                        "-t", "2", "-fa", flash, "--device", "test", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    fas = [False] if flash == "off" else [False, True]
    assert [(r["ctx"], r["workers"], r["flash_attn"]) for r in rows] == \
        [(c, w, fa) for c in (96, 160) for fa in fas for w in (1, 2)]
    for r in rows:
        assert KEYS <= r.keys()
        assert r["device"] == "test" and r["model"] == "tiny.gguf"
        assert min(r["hogwild_step_ms"], r["batched_step_ms"], r["single_step_ms"], r["reprefill_step_ms"]) > 0
        # times are rounded to 1e-4 ms and ratios to 1e-3: allow exactly that rounding
        h, b, s = r["hogwild_step_ms"], r["batched_step_ms"], r["single_step_ms"]
        assert abs(r["overhead_ratio"] - h / b) <= h / b * (5e-5 / h + 5e-5 / b) + 5e-4
        assert abs(r["speedup_vs_single"] - r["workers"] * s / h) <= r["workers"] * s / h * (5e-5 / h + 5e-5 / s) + 5e-4
        # the views hold ctx tokens each plus the timed steps; the cache stores each token once
        assert r["kv_cells"] == r["unique_tokens"]
        assert r["ctx"] <= r["unique_tokens"] <= (r["ctx"] + 2 + 3) * r["workers"]  # 2 timed, 3 warm-up steps
        assert r["hogwild_kernels"] is None  # counted on CUDA builds only
        assert r["shadows"] == 0 if r["workers"] == 1 else r["shadows"] > 0  # copies only where views differ
    table = res.stdout.splitlines()  # progress goes to stderr
    assert table[0].startswith("| device | model | workers | ctx |") and len(table) == 2 + len(rows)
