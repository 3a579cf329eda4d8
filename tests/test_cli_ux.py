"""What a person sees and types (issue 17): Ctrl-C from the first instant, outputs that never collide,
names, seeds, the trained context, --quiet's exit codes, prompt files from Windows, prefill progress,
`complete` and `bench` as one-line errors and a like-for-like baseline, and what the output records."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from conftest import FAST, PROBLEM, invoke, one_error, short_rules_file
from hogwild_cpp.trace import read_trace
from models import gguf_gen

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    return gguf_gen.write_llama_gguf(tmp_path_factory.mktemp("ux") / "one.gguf", n_embd=128, n_head=4,
                                     n_head_kv=2, n_layer=1, seed=3, weight_std=0.3, n_ctx_train=8192)


# --- 1. Ctrl-C ------------------------------------------------------------------------------------

def test_ctrl_c_while_the_model_loads_exits_130_and_writes_everything(one_layer, tmp_path):
    """SIGINT as soon as llama.cpp logs the load (its log callback runs Python then: the KeyboardInterrupt
    used to be swallowed there, 'Exception ignored on calling ctypes callback function', and the run went
    on to exit 0)."""
    prompt, out, trace = tmp_path / "p.txt", tmp_path / "out.json", tmp_path / "t.jsonl"
    prompt.write_text(PROBLEM * 40)  # more than one prefill chunk
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", str(one_layer), str(prompt), "-n", "100000",
                             "-t", "1", "-c", "32768", "--output", str(out), "--trace", str(trace), "-v"],  # -v: llama.cpp's log on stderr
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    while not any("llama_model_loader" in line for line in seen[-1:]):
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 130, err[-3000:]
    assert "Exception ignored" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "stop: interrupted" in stdout
    data = json.loads(out.read_text())
    assert data["reason"] == "interrupted" and data["steps"] < 5
    assert read_trace(trace)[3]["reason"] == "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "p.txt", "t.jsonl"]


def test_ctrl_c_during_a_long_prefill_stops_between_chunks(one_layer, tmp_path, monkeypatch):
    """The engine checks for a stop between prefill chunks: the run ends interrupted, steps 0, with
    the prompt cut after the chunk being decoded."""
    from hogwild_cpp import Hogwild
    from hogwild_cpp.engine import DoneEvent, Progress

    hw = Hogwild(one_layer, workers=2, threads=1, n_ctx=32768, temp=0.0)
    run = hw.start(PROBLEM * 100)
    progress, result = [], None
    for ev in run.events():
        if isinstance(ev, Progress):
            progress.append(ev)
            run.stop()  # as the SIGINT handler does
        elif isinstance(ev, DoneEvent):
            result = ev.result
    hw.close()
    assert len(progress) == 1 and progress[0].done < progress[0].total
    assert result.reason == "interrupted" and result.steps == 0 and result.prompt_tokens == progress[0].done


def test_ctrl_c_while_the_workers_are_set_up_ends_the_run_there(one_layer, tmp_path):
    """With many workers the markers and headers after the prompt take a while (a decode each): a stop
    there ends the run before any step, with its trace whole."""
    from hogwild_cpp import Hogwild
    from hogwild_cpp.engine import DoneEvent, SetupProgress

    hw = Hogwild(one_layer, workers=8, threads=1, n_ctx=8192, temp=0.0)
    run = hw.start(PROBLEM, trace=tmp_path / "t.jsonl")
    setup, result = [], None
    for ev in run.events():
        if isinstance(ev, SetupProgress):
            setup.append(ev)
            run.stop()
        elif isinstance(ev, DoneEvent):
            result = ev.result
    hw.close()
    assert [(e.done, e.total) for e in setup] == [(1, 8)]
    assert result.reason == "interrupted" and result.steps == 0 and set(result.generated.values()) == {0}
    assert read_trace(tmp_path / "t.jsonl")[3]["reason"] == "interrupted"


# --- 2. outputs ------------------------------------------------------------------------------------

def test_two_runs_writing_the_same_files_do_not_share_a_temporary_file(one_layer, tmp_path):
    out, trace = tmp_path / "out.json", tmp_path / "t.jsonl"
    args = [sys.executable, str(ROOT / "cli.py"), "run", str(one_layer), "-", "-n", "30", *FAST,
            "--output", str(out), "--trace", str(trace), "--quiet"]
    procs = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(PROBLEM, timeout=300)
        assert p.returncode == 3, err  # no answer from random weights
    assert json.loads(out.read_text())["reason"] == "budget"
    lines = trace.read_text().splitlines()
    assert all(json.loads(line) for line in lines) and json.loads(lines[-1])["type"] == "end"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "t.jsonl"]  # no temporary file left


def test_outputs_get_the_usual_permissions(one_layer, tmp_path):
    out, trace = tmp_path / "out.json", tmp_path / "t.jsonl"
    res = invoke("run", one_layer, "-", "-n", "2", *FAST, "--output", out, "--trace", trace)
    assert res.exit_code == 0, res.output
    mask = os.umask(0o022)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == (trace.stat().st_mode & 0o777) == 0o666 & ~mask


@pytest.mark.parametrize("which", ["output-trace", "output-prompt", "trace-prompt", "output-model"])
def test_outputs_that_collide_with_each_other_or_an_input_are_refused(one_layer, tmp_path, which):
    prompt = tmp_path / "p.txt"
    prompt.write_text(PROBLEM)
    target = {"output-trace": tmp_path / "x.json", "output-prompt": prompt, "trace-prompt": prompt,
              "output-model": one_layer}[which]
    flags = {"output-trace": ["--output", target, "--trace", tmp_path / "." / "x.json"],
             "output-prompt": ["--output", target], "trace-prompt": ["--trace", target],
             "output-model": ["--output", target]}[which]
    before = one_layer.stat().st_mtime_ns
    res = invoke("run", one_layer, prompt, "-n", "2", *FAST, *flags)
    one_error(res, "it would be overwritten" if which != "output-trace" else "is also the --trace file")
    assert len(res.output.strip().splitlines()) == 1, res.output  # no usage block: one line
    assert prompt.read_text() == PROBLEM and one_layer.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]


@pytest.mark.parametrize("args", [["run", "{model}", "-", "-n", "50", *FAST],
                                  ["run", "{model}", "-", "-n", "50", *FAST, "--json"],
                                  ["complete", "{model}", "-", "-n", "50", *FAST], ["protocol"], ["run", "--help"],
                                  ["--help"], ["--version"]])
def test_a_closed_stdout_ends_the_command_quietly_with_141_as_sigpipe_would(one_layer, args):
    """`hogwild run ... | head`: once the reader has gone, exit 141 (128 + SIGPIPE) with nothing on stderr
    (no traceback, no 'Exception ignored' from Python's last flush). The pipe is closed before the command
    starts, so that its first write meets it closed, every time."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *[str(a).format(model=one_layer) for a in args]],
                                stdin=subprocess.PIPE, stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    _, err = proc.communicate(PROBLEM, timeout=300)
    assert proc.returncode == 141 and "Traceback" not in err and "Exception ignored" not in err, err


# --- 3. names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("names, message", [("Al,", "a worker's name is empty"), ("Al, ", "a worker's name is empty"),
                                            ("Al,Al", "two workers have the same name"),
                                            ("Al, Al", "two workers have the same name")])
def test_names_must_be_unique_and_not_empty(tmp_path, names, message):
    """Refused before the model is touched (it is not even a model here)."""
    fake = tmp_path / "not-a-model.gguf"
    fake.write_text("nothing")
    res = invoke("run", fake, "-", "--names", names)
    one_error(res, message)
    assert len(res.output.strip().splitlines()) == 1, res.output


# --- 4. seeds ---------------------------------------------------------------------------------------

def test_seed_minus_one_is_random_printed_and_repeatable(one_layer, tmp_path):
    def run(seed, name):
        out = tmp_path / name
        res = invoke("run", one_layer, "-", "-n", "12", "--temp", "1.5", "--top-k", "0", "--top-p", "1",
                     "--min-p", "0", "-t", "1", "-c", "8192", "-s", seed, "--output", out)
        assert res.exit_code == 0, res.output
        return res, json.loads(out.read_text())

    res, first = run(-1, "a.json")
    seed = int(res.output.split("seed: ")[1].split()[0])
    assert first["settings"]["seed"] == seed
    _, again = run(seed, "b.json")
    assert again["texts"] == first["texts"]
    _, other = run(-1, "c.json")
    assert other["settings"]["seed"] != seed and other["texts"] != first["texts"]
    assert first["texts"]["Alice"] != first["texts"]["Bob"]  # each worker its own seed (seed + w)


# --- 5. the trained context ---------------------------------------------------------------------------

def test_a_context_past_the_trained_one_is_warned_about_and_runs(one_layer):
    res = invoke("run", one_layer, "-", "-n", "2", "--temp", "0", "-t", "1", "-c", "16384")
    assert res.exit_code == 0, res.output
    assert "warning: -c 16384 is more than the 8192 tokens one.gguf was trained on" in res.output
    assert "the KV cache takes about 4.0 MiB" in res.output  # 16384 cells x 1 layer x 2 KV heads x (32 + 32) x f16
    quiet = invoke("run", one_layer, "-", "-n", "2", *FAST)
    assert "warning" not in quiet.output


# --- 6. --quiet ------------------------------------------------------------------------------------------

def test_quiet_prints_nothing_and_exits_3_without_an_answer(one_layer):
    res = invoke("run", one_layer, "-", "-n", "4", *FAST, "--quiet")
    assert res.exit_code == 3 and res.output == "", res.output


def test_quiet_prints_the_answer_alone_and_exits_0(one_layer, tmp_path, monkeypatch):
    from hogwild_cpp.engine import Engine

    def finds_an_answer(self, problem):  # the engine's own stream, with an answer at the end
        for ev in original(self, problem):
            if hasattr(ev, "result"):
                ev.result.answer, ev.result.reason = "17", "answer"
            yield ev

    original = Engine.stream
    monkeypatch.setattr(Engine, "stream", finds_an_answer)
    res = invoke("run", one_layer, "-", "-n", "2", *FAST, "--quiet")
    assert res.exit_code == 0 and res.output == "17\n", res.output


def test_quiet_and_its_exit_codes_are_documented():
    res = CliRunner().invoke(cli.main, ["run", "--help"])
    assert "3 when the run ended without one" in " ".join(res.output.split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`--quiet` prints only the answer" in readme and "3 when the run ended without one" in readme


# --- 7. prompt files from Windows -----------------------------------------------------------------------

def test_a_bom_and_crlf_line_ends_are_normalised(tmp_path):
    plain, windows = tmp_path / "plain.txt", tmp_path / "win.txt"
    plain.write_bytes(b"Line one.\nLine two.\n")
    windows.write_bytes(b"\xef\xbb\xbfLine one.\r\nLine two.\r\n")
    assert cli._read_prompt(windows) == cli._read_prompt(plain) == "Line one.\nLine two.\n"


# --- 8. prefill progress -------------------------------------------------------------------------------

def test_prefill_progress_is_printed_once_it_takes_long(one_layer, monkeypatch):
    monkeypatch.setattr(cli, "PROGRESS_AFTER_S", 0.0)  # as if the prefill had taken more than a second
    res = invoke("run", one_layer, "-", "-np", "8", "-n", "2", *FAST)
    assert res.exit_code == 0 and re.search(r"^prompt: \d+/\d+ tokens$", res.output, re.MULTILINE), res.output
    assert "workers: 8/8 set up" in res.output  # the markers and headers after the prompt
    monkeypatch.setattr(cli, "PROGRESS_AFTER_S", 1000.0)
    res = invoke("run", one_layer, "-", "-np", "8", "-n", "2", *FAST)
    assert not re.search(r"^prompt: \d+/\d+ tokens$", res.output, re.MULTILINE), res.output
    assert "set up" not in res.output


# --- 9. complete and bench --------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["complete", "bench"])
def test_complete_and_bench_refuse_a_bad_model_on_one_line(tmp_path, command):
    bad = tmp_path / "page.gguf"
    bad.write_text("<html>not a model</html>")
    prompt = tmp_path / "p.txt"
    prompt.write_text(PROBLEM)
    args = [command, bad, prompt] if command == "complete" else [command, bad, "-np", "1", "--steps", "1"]
    res = invoke(*args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "could not load" in res.output, res.output


def test_complete_takes_runs_flags_and_the_chat_template(tmp_path):
    chat = gguf_gen.write_llama_gguf(tmp_path / "chat.gguf", n_embd=128, n_head=4, n_head_kv=2, n_layer=1, seed=3,
                                     weight_std=0.3, chat_template="chatml")
    prompt = tmp_path / "p.txt"
    prompt.write_text(PROBLEM)

    def complete(*flags):
        res = invoke("complete", chat, prompt, "-n", "8", "-t", "1", *flags)
        assert res.exit_code == 0, res.output
        return res

    templated, raw = complete("--temp", "0"), complete("--temp", "0", "--raw")
    n_prompt = lambda res: int(res.stderr.split("prompt: ")[1].split()[0])  # noqa: E731
    assert n_prompt(templated) > n_prompt(raw)  # <|im_start|>user ... <|im_start|>assistant
    assert complete("-c", "512", "--temp", "0").stdout == complete("--n-ctx", "512", "--temp", "0").stdout
    assert complete("-s", "5", "--temp", "2").stdout == complete("-s", "5", "--temp", "2").stdout
    assert "seed: " in complete("-s", "-1").stderr
    prompt.write_text(PROBLEM * 20)
    res = invoke("complete", chat, prompt, "-n", "8", "-c", "256")
    one_error(res, "do not fit the context")


# --- 10. what the output and the trace record --------------------------------------------------------

def test_the_output_records_the_model_and_settings_and_trace_tokens_their_text(one_layer, tmp_path):
    out, trace = tmp_path / "out.json", tmp_path / "t.jsonl"
    res = invoke("run", one_layer, "-", "-n", "6", *FAST, "--names", "Ann,Ben", "--output", out, "--trace", trace)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["model"] == str(one_layer)
    assert data["settings"]["names"] == ["Ann", "Ben"] and data["settings"]["protocol"] == "default"
    assert data["settings"]["max_steps"] == 6 and data["settings"]["n_ctx"] == 8192
    _, blocks, records, _ = read_trace(trace)
    assert records and all(isinstance(r["text"], str) for r in records)
    ann = [r for r in records if r["worker"] == "Ann"]
    assert len(ann) == data["generated"]["Ann"] == 6
    piece = {t: text for r in records for t, text in [(r["token"], r["text"])]}
    assert all(piece[r["token"]] == r["text"] for r in records)  # a token's text is its piece, every time


# --- 11. context kept in reserve for the finisher -------------------------------------------------------

@pytest.mark.parametrize("workers, n_ctx", [(1, 512), (2, 768)])
def test_a_run_that_fills_the_context_still_ends_with_the_finisher(one_layer, tmp_path, workers, n_ctx):
    """`-c 600 -n 100000` used to fill the context before the finisher ran: no answer could be forced.
    The steps now stop while the finisher's text and its tokens still fit."""

    out = tmp_path / "out.json"
    res = invoke("run", one_layer, "-", "-np", workers, "-c", n_ctx, "-n", "100000", "--temp", "0", "-t", "1",
                 "--protocol", short_rules_file(tmp_path), "--output", out)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["reason"] == "ctx_full" and data["steps"] < 100000
    assert data["finisher"], data  # it wrote tokens (random weights never close the \boxed{})
