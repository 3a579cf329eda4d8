"""The engine: reproducible runs, traces that replay with stock decoding, interleaved views, the CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from hogwild_cpp import Hogwild, load_protocol
from hogwild_cpp.engine import Engine, Settings
from hogwild_cpp.layouts import LAYOUTS
from hogwild_cpp.default_model import default_model
from hogwild_cpp.native import Context, ContextConfig, Model
from hogwild_cpp.trace import read_trace, view_tokens
from conftest import short_rules_file
from models import gguf_gen

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = "A baker makes 12 muffins in the morning and 5 more in the afternoon. How many muffins?"






def run_engine(model_path, tmp_path, short_rules=True, **kw):
    model = Model(model_path)
    trace = tmp_path / "trace.jsonl"
    protocol = load_protocol(short_rules_file(tmp_path)) if short_rules else None
    settings = Settings(**{"temp": 0.0, "threads": 1, "n_ctx": 8192, "max_steps": 24, "cache_type_k": "f32",
                           "cache_type_v": "f32", "flash_attn": "off", "protocol": protocol, **kw})
    engine = Engine(model, settings, trace_path=trace)
    result = [ev for ev in engine.stream(PROBLEM)][-1].result
    engine.close()
    return model, result, read_trace(trace)


def replay(model, trace, tol_logprob=5e-4, cache=("f32", "f32"), flash="off"):
    """Re-decode every sampled token's view with stock single-sequence decoding.

    f32 tolerance: a one-token decode and a 512-token prefill sum in another order (~1e-4 on logprobs).
    """
    header, blocks, records, end = trace
    ctx = Context(model, ContextConfig(n_ctx=8192, n_batch=512, n_seq_max=1, n_threads=1, hogwild=False,
                                       type_k=cache[0], type_v=cache[1], flash_attn=flash))
    for rec in records:
        toks = view_tokens(blocks, rec["view"])
        ctx.clear()
        logits = ctx.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])[0]
        m = logits.max()
        logprobs = logits - m - np.log(np.exp(logits - m).sum())  # the model's, as the trace records them
        allowed = logprobs.copy()
        allowed[header["suppressed"]] = -np.inf
        # greedy: the sampled token is the stock argmax (or ties with it within the cache's rounding)
        assert allowed[rec["token"]] >= allowed.max() - tol_logprob, rec
        assert abs(logprobs[rec["token"]] - rec["logprob"]) <= tol_logprob, rec
    ctx.close()
    return len(records)


@pytest.mark.parametrize("layout", ["combined", "stepwise", "contiguous"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_trace_replays_with_stock_decoding(one_layer, tmp_path, layout, workers):
    model, result, trace = run_engine(one_layer, tmp_path, workers=workers, layout=layout)
    assert replay(model, trace) == len(trace[2]) > 0  # finisher records included
    assert sum(r["worker"] is not None for r in trace[2]) == sum(result.generated.values())
    assert trace[3]["reason"] == result.reason


def test_one_worker_generates_exactly_like_plain_llama_cpp_on_the_default_model(tmp_path):
    """One worker, stepwise: no block ever moves, so the run is plain llama.cpp generation of the
    same tokens. Fed to stock llama.cpp in the same chunks (the prompt in 512-token chunks, the
    history header, the first step's label and opener, then a token at a time), every logprob and
    greedy token agree."""
    model, result, (header, blocks, records, end) = run_engine(default_model(), tmp_path, workers=1,
                                                                layout="stepwise", max_steps=16, short_rules=False,
                                                                cache_type_k="f16", cache_type_v="f16",
                                                                flash_attn="auto")
    ctx = Context(model, ContextConfig(n_ctx=4096, n_batch=512, n_seq_max=1, n_threads=1, hogwild=False))
    ctx.clear()
    (prompt_id, _), (header_id, _), _ = records[0]["view"]
    assert blocks[header_id]["kind"] == "history-header"
    prompt = blocks[prompt_id]["tokens"]
    for i in range(0, len(prompt), 512):  # the engine's chunked prefill
        ctx.decode([(t, i + j, 0, False) for j, t in enumerate(prompt[i:i + 512])])
    history_header = blocks[header_id]["tokens"]
    ctx.decode([(t, len(prompt) + j, 0, False) for j, t in enumerate(history_header)])
    pos = len(prompt) + len(history_header)
    for rec in [r for r in records if r["worker"] is not None]:
        toks = view_tokens(blocks, rec["view"])
        logits = ctx.decode([(t, pos + j, 0, pos + j == len(toks) - 1) for j, t in enumerate(toks[pos:])])[0]
        pos = len(toks)
        m = logits.max()
        logprob = float(logits[rec["token"]] - m - np.log(np.exp(logits - m).sum()))
        allowed = logits.copy()
        allowed[header["suppressed"]] = -np.inf
        assert rec["token"] == int(allowed.argmax()) and abs(logprob - rec["logprob"]) < 1e-5, rec
    assert sum(r["worker"] is not None for r in records) == 16


def test_workers_see_each_others_tokens_of_the_same_step_in_the_trace(one_layer, tmp_path):
    """Same-step visibility: at every step, a worker's view holds the other's current step exactly as
    long as the other's own view does (its token of that step included)."""
    _, _, (header, blocks, records, end) = run_engine(one_layer, tmp_path, workers=2, layout="combined")
    by_step = {}
    for rec in records:
        if rec["worker"] is not None:
            by_step.setdefault(rec["step"], {})[rec["worker"]] = dict(map(tuple, rec["view"]))
    compared = 0
    for views in by_step.values():
        if len(views) == 2:
            own_bob = {b: n for b, n in views["Bob"].items() if blocks[b]["owner"] == "Bob"}
            for b, n in own_bob.items():
                assert views["Alice"].get(b, n) == n
                compared += b in views["Alice"]
    assert compared > 10


@pytest.fixture(scope="module")
def soft_one_layer(tmp_path_factory):
    """Small weights: flash attention on the CPU accumulates V in f16, so stock itself gives a view other
    logits when its cells lie in another order; on the sharp model that alone reaches ~0.02 in a
    logprob (the same view's cells stored in shuffled 32-cell chunks), on this one ~0.005."""
    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("engine") / "soft.gguf", n_embd=128, n_head=4,
                                     n_head_kv=2, n_layer=1, seed=3, weight_std=0.05, n_ctx_train=8192)


@pytest.mark.parametrize("layout", ["combined", "stepwise", "contiguous"])
def test_trace_replays_with_stock_flash_attention(soft_one_layer, tmp_path, layout):
    """With flash attention, against stock flash attention (f16 accumulation on the CPU: looser)."""
    model, result, trace = run_engine(soft_one_layer, tmp_path, workers=3, layout=layout, flash_attn="on",
                                      cache_type_k="f16", cache_type_v="f16")
    assert replay(model, trace, tol_logprob=2e-2, cache=("f16", "f16"), flash="on") == len(trace[2]) > 0


def test_cli_runs_with_flash_attention_and_a_quantized_cache(one_layer, tmp_path):
    trace = tmp_path / "t.jsonl"
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-n", "8", "--temp", "0", "-t", "1", "-c", "4096",
                                        "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0", "--trace", str(trace), "--quiet"],
                             input=PROBLEM)
    assert res.exit_code == 3, res.output  # --quiet: 3, the run ended without an answer
    header = read_trace(trace)[0]
    assert header["flash_attn"] is True and header["cache_types"] == ["q8_0", "q8_0"]


def test_cli_refuses_a_quantized_v_cache_without_flash_attention(one_layer):
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-fa", "off", "-ctv", "q8_0"], input=PROBLEM)
    assert res.exit_code == 2 and "needs flash attention" in res.output and "Traceback" not in res.output


def test_greedy_runs_are_reproducible(one_layer, tmp_path):
    _, a, _ = run_engine(one_layer, tmp_path, workers=3)
    _, b, _ = run_engine(one_layer, tmp_path, workers=3)
    assert a.texts == b.texts and a.answer == b.answer


def test_a_worker_sees_another_workers_unfinished_step(one_layer, tmp_path):
    _, _, (header, blocks, records, end) = run_engine(one_layer, tmp_path, workers=2, layout="combined")
    alice_saw_bob_partial = [
        rec for rec in records if rec["worker"] == "Alice" and any(
            blocks[b]["owner"] == "Bob" and blocks[b]["kind"] == "step" and 0 < n < len(blocks[b]["tokens"])
            for b, n in rec["view"])]
    assert alice_saw_bob_partial


def test_kv_cells_stay_at_unique_tokens(one_layer):
    model = Model(one_layer)
    engine = Engine(model, Settings(workers=4, temp=0.0, threads=1, n_ctx=8192, max_steps=20))
    for _ in engine.stream(PROBLEM):
        pass
    assert engine.cache.used_cells() == engine.cache.unique_tokens()
    engine.close()


def test_python_api_runs_and_stops_at_the_budget(one_layer):
    h = Hogwild(one_layer, workers=2, max_steps=10, temp=0.0, threads=1, n_ctx=8192)
    result = h.run(PROBLEM)
    h.close()
    assert result.reason == "budget" and set(result.texts) == {"Alice", "Bob"}
    assert sum(result.generated.values()) == 20


def test_cli_run_writes_output_and_trace(one_layer, tmp_path):
    out, trace = tmp_path / "out.json", tmp_path / "t.jsonl"
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-n", "8", "--temp", "0", "-t", "1",
                                        "-c", "8192", "--output", str(out), "--trace", str(trace)],
                             input=PROBLEM)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["reason"] == "budget" and set(data["texts"]) == {"Alice", "Bob"}
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[-1]["type"] == "end"
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_subprocess_reads_a_prompt_file(one_layer, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text(PROBLEM)
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(one_layer), str(prompt), "-n", "6",
                           "--temp", "0", "-t", "1", "-c", "8192", "--no-color"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "answer:" in proc.stdout and "generated:" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["missing.txt"], "missing.txt does not exist"),
    (["-", "--names", "A,B,C"], "3 names for 2 workers"),
    (["-", "--names", "A"], "1 names for 2 workers"),
    (["-", "-np", "0"], "0 is not in the range 1<=x<=64"),
    (["-", "-np", "-2"], "-2 is not in the range 1<=x<=64"),
    (["-", "-np", "65"], "65 is not in the range 1<=x<=64"),
    (["-", "-n", "0"], "a budget of 0 steps: give 1 or more, or -1"),
    (["-", "-n", "-5"], "-5 is not in the range x>=-1"),
    (["-", "--temp", "-0.5"], "-0.5 is not in the range x>=0"),
    (["-", "--layout", "tree"], "'tree' is not one of 'combined', 'stepwise', 'contiguous'"),
    (["-", "--output", "/nonexistent-dir/out.json"], "directory /nonexistent-dir does not exist"),
    (["-", "--trace", "/nonexistent-dir/t.jsonl"], "directory /nonexistent-dir does not exist"),
    (["-", "--output", "{tmp}"], "{tmp} is a directory"),
    (["-", "--trace", "{tmp}"], "{tmp} is a directory"),
])
def test_cli_bad_input_is_a_one_line_error(one_layer, tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), *args], input=PROBLEM)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and message.format(tmp=tmp_path) in error[0], res.output
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("model, message", [("missing.gguf", "does not exist"), ("", "is a directory")])
def test_cli_refuses_a_missing_model_or_a_directory(tmp_path, model, message):
    res = CliRunner().invoke(cli.main, ["run", str(tmp_path / model), "-"], input=PROBLEM)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_a_model_without_a_chat_template_gets_the_plain_prompt(one_layer, tmp_path):
    """one_layer has no chat template; a template llama.cpp does not know also falls back."""
    from hogwild_cpp import protocol

    odd = gguf_gen.write_llama_gguf(tmp_path / "odd.gguf", n_embd=128, n_head=4, n_head_kv=2, n_layer=1,
                                    seed=3, weight_std=0.3, chat_template="{{ no template llama.cpp knows }}")
    for path in (one_layer, odd):
        model = Model(path)
        text = protocol.chat_prompt(model, ["Alice", "Bob"], LAYOUTS["combined"], PROBLEM)
        model.close()
        assert text.endswith(f"Problem: {PROBLEM}\n\nSolution:\n")
    out = tmp_path / "out.json"
    res = CliRunner().invoke(cli.main, ["run", str(odd), "-", "-n", "4", "-t", "1", "-c", "8192",
                                        "--output", str(out)], input=PROBLEM)
    assert res.exit_code == 0 and json.loads(out.read_text())["reason"] == "budget", res.output


def test_cli_refuses_a_read_only_output_directory(one_layer, tmp_path):
    """As root (CI), permissions do not apply: the CLI runs without the capability that overrides them."""
    import os
    import shutil

    (tmp_path / "ro").mkdir(mode=0o555)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    for flag in ("--output", "--trace"):
        proc = subprocess.run([*prefix, sys.executable, str(ROOT / "cli.py"), "run", str(one_layer), "-", "-n", "2",
                               flag, str(tmp_path / "ro" / "x.json")],
                              input=PROBLEM, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"directory {tmp_path / 'ro'} is not writable" in proc.stderr.splitlines()[-1], proc.stderr
        assert not list((tmp_path / "ro").iterdir())


def test_a_trace_that_cannot_be_written_loses_nothing_else(one_layer, tmp_path):
    """A file size limit (as a full disk would) fails the trace mid-run: the run goes on, the result
    is written, no half trace is left, and the exit code (1) says something failed."""
    import resource

    out, trace = tmp_path / "out.json", tmp_path / "t.jsonl"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))  # noqa: E731
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(one_layer), "-", "-n", "40",
                           "--temp", "0", "-t", "1", "-c", "8192", "--output", str(out), "--trace", str(trace)],
                          input=PROBLEM, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] == f"Error: the trace was not written: {trace} (File too large)"
    assert json.loads(out.read_text())["reason"] == "budget"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_an_output_that_cannot_be_written_is_saved_elsewhere(one_layer, tmp_path, monkeypatch):
    """The output fails only at the end (its directory refuses the write): exit 1, and the
    result goes to the temporary directory instead, named in the error."""
    out = tmp_path / "out.json"
    write = cli._write_atomic

    def refuses_out(path, text):
        if path == out:
            raise IsADirectoryError(21, "Is a directory")
        write(path, text)

    monkeypatch.setattr(cli, "_write_atomic", refuses_out)
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-n", "4", "--temp", "0", "-t", "1",
                                        "-c", "8192", "--output", str(out)], input=PROBLEM)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    error = res.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: could not write {out} (Is a directory); the result is in "), error
    saved = Path(error.split("the result is in ")[1])
    assert json.loads(saved.read_text())["reason"] == "budget" and not out.exists()
    saved.unlink()


def test_cli_refuses_a_file_that_is_not_gguf_with_llama_cpps_reason(tmp_path):
    bad = tmp_path / "page.gguf"
    bad.write_text("<html>not a model</html>")
    res = CliRunner().invoke(cli.main, ["run", str(bad), "-"], input=PROBLEM)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "could not load" in res.output and "invalid magic characters: '<htm'" in res.output  # llama.cpp's


@pytest.mark.parametrize("arch, reason", [("gpt2", "no RoPE"), ("qwen2vl", "M-RoPE")])
def test_cli_refuses_an_unsupported_architecture_with_the_reason(tmp_path, arch, reason):
    from models import gguf_gen

    path = getattr(gguf_gen, f"write_{arch}_gguf")(tmp_path / f"{arch}.gguf")
    res = CliRunner().invoke(cli.main, ["run", str(path), "-", "-n", "4"], input=PROBLEM)
    assert res.exit_code == 2 and reason in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_cli_refuses_a_prompt_longer_than_the_context(one_layer):
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-c", "256"], input=PROBLEM * 20)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert re.search(r"Error: the prompt \(\d+ tokens\) and 2 workers do not fit the context \(256 tokens\): "
                     r"use -c \d+ or more", res.output), res.output


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"\xff\xfe bad", "not UTF-8")])
def test_cli_refuses_an_empty_or_binary_prompt(one_layer, tmp_path, content, message):
    prompt = tmp_path / "p.txt"
    prompt.write_bytes(content)
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), str(prompt)])
    assert res.exit_code == 2 and message in res.output


def test_cli_refuses_a_directory_as_prompt(one_layer, tmp_path):
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output


@pytest.mark.parametrize("cut, reason", [("header", "failed to read"), ("data", "not within the file bounds")])
def test_cli_refuses_a_truncated_gguf(one_layer, tmp_path, cut, reason):
    data = one_layer.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:100] if cut == "header" else data[:-1000])
    res = CliRunner().invoke(cli.main, ["run", str(bad), "-"], input=PROBLEM)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "could not load" in res.output and reason in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_cli_reports_a_kv_allocation_failure_on_one_line(one_layer):
    """A KV cache too big for memory (here ~280 GB) is a runtime failure (exit 1) with a hint, refused before
    llama.cpp tries (it filled 19 GB of memory with cell bookkeeping before its allocation failed)."""
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-c", "1000000000", "-n", "2"], input=PROBLEM)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "could not create a context" in res.output and "smaller -c" in res.output
    assert "more than this machine's memory" in res.output
    lines = res.output.strip().splitlines()  # past the trained context: a warning first
    assert len(lines) == 2 and lines[0].startswith("warning: -c 1000000000 is more than"), res.output


def test_cli_warns_that_gpu_layers_need_a_gpu_build(one_layer):
    import llama_cpp.llama_cpp as ll

    if ll.llama_supports_gpu_offload():
        pytest.skip("a GPU build")
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-n", "2", "-ngl", "10", "-t", "1",
                                        "-c", "8192"], input=PROBLEM)
    assert res.exit_code == 0 and "-ngl 10 ignored" in res.output


def test_a_full_context_stops_cleanly_and_keeps_everything(one_layer, tmp_path):
    out = tmp_path / "out.json"
    first = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-c", "256"], input=PROBLEM)
    need = int(re.search(r"use -c (\d+) or more", first.output).group(1))  # the prompt, headers and first steps
    res = CliRunner().invoke(cli.main, ["run", str(one_layer), "-", "-n", "500", "--temp", "0", "-t", "1",
                                        "-c", str(need + 300), "--output", str(out)], input=PROBLEM)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["reason"] == "ctx_full" and all(data["texts"].values())


def test_ctrl_c_stops_within_a_step_and_writes_everything(one_layer, tmp_path):
    import signal
    import time

    out, trace = tmp_path / "out.json", tmp_path / "t.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", str(one_layer), "-", "-n", "100000",
                             "-t", "1", "-c", "32768", "--output", str(out), "--trace", str(trace)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write(PROBLEM)
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    time.sleep(4)  # well into the run (the context lasts ~30 s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads(out.read_text())["reason"] == "interrupted"
    assert json.loads(trace.read_text().splitlines()[-1]) == {"type": "end", "reason": "interrupted",
                                                              "answer": None, "answer_source": None,
                                                              "answer_worker": None}


FUZZ_CHILD = """
import os, random, sys
from hogwild_cpp.native import Model, NativeError
data, rng, out = open(sys.argv[1], 'rb').read(), random.Random(int(sys.argv[2])), sys.argv[3]
for k in range(int(sys.argv[4])):
    b = bytearray(data)
    kind = ('flip', 'random', 'cut')[k % 3]
    if kind == 'flip':
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(min(len(b), 4096))] = rng.randrange(256)
    elif kind == 'random':
        b = bytearray(rng.randbytes(rng.randint(0, 2000)))
        b[:4] = b'GGUF' if k % 2 else b[:4]
    else:
        b = b[:rng.randrange(len(b))]
    open(out, 'wb').write(b)
    try:
        Model(out).close()
        print(k, kind, 'loaded')
    except NativeError as exc:
        print(k, kind, 'refused:', str(exc).splitlines()[0][:60])
"""


def test_mutated_and_random_files_give_clean_errors_not_crashes(one_layer, tmp_path):
    """Fed to the model loader in a child process: every file loads or is refused, none crashes it."""
    proc = subprocess.run([sys.executable, "-c", FUZZ_CHILD, str(one_layer), "7", str(tmp_path / "fuzz.gguf"), "60"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 60 and sum("refused" in line for line in lines) > 30
