"""What a person watches during `hogwild run` (issue 17, item 2): the engine's step events, the live
view's columns, step headers and self-check questions, its status line, and `--json` for scripts."""

import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from conftest import short_rules_file
from hogwild_cpp import Hogwild
from hogwild_cpp import protocol as P
from hogwild_cpp.engine import DecodeProgress, DoneEvent, StepEvent, StepStart, TokenEvent
from hogwild_cpp.view import SEPARATOR, LiveView, StatusLine, wrap

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = "A baker makes 12 muffins in the morning and 5 more in the afternoon. How many muffins?"
FAST = ["--temp", "0", "-t", "1", "-c", "8192"]


def invoke(*args, input=PROBLEM):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


@pytest.fixture
def short_steps(monkeypatch):
    """Random weights never end a step: here one ends once it holds 12 characters."""
    monkeypatch.setattr(P, "step_finished", lambda text: len(text) >= 12)


# --- what the engine tells the view ----------------------------------------------------------------

def test_every_step_opens_with_a_step_start_and_the_self_check_is_flagged(one_layer, tmp_path):
    hw = Hogwild(one_layer, workers=2, threads=1, n_ctx=8192, temp=0.0, max_steps=40, bench_step_tokens=3,
                 check_every=6, finisher_tokens=0, protocol=short_rules_file(tmp_path))
    events = list(hw.stream(PROBLEM))
    hw.close()
    starts = [e for e in events if isinstance(e, StepStart)]
    ends = [e for e in events if isinstance(e, StepEvent)]
    result = next(e.result for e in events if isinstance(e, DoneEvent))
    for name in ("Alice", "Bob"):
        mine = [e for e in starts if e.worker == name]
        assert [e.step for e in mine] == list(range(1, len(mine) + 1))
        assert mine[0].label == "**" + name + " [1]:** " and mine[0].opening.startswith(f"Hi, {name} here.")
        finished = [e for e in ends if e.worker == name]
        assert result.finished_steps[name] == len(finished) == len(mine) - 1  # the last step still open
        for start, end in zip(mine, finished):  # a finished step's text begins with what opened it
            assert end.step == start.step and end.text.lstrip().startswith(start.label + start.opening)
    checks = [e for e in starts if e.check]
    assert checks and all(e.opening == P.default().check_question(["Alice", "Bob"], e.worker) for e in checks)
    assert not any(e.check for e in starts if e.step == 1)


def test_every_decode_step_reports_the_budget_and_the_context_used(one_layer):
    hw = Hogwild(one_layer, workers=2, threads=1, n_ctx=4096, temp=0.0, max_steps=6, finisher_tokens=0)
    progress = [e for e in hw.stream(PROBLEM) if isinstance(e, DecodeProgress)]
    hw.close()
    assert [(p.step, p.total, p.ctx_size) for p in progress] == [(s, 6, 4096) for s in range(1, 7)]
    used = [p.ctx_used for p in progress]
    assert used == sorted(used) and used[-1] - used[0] >= 2 * 5  # two workers' tokens each step


# --- the live view ----------------------------------------------------------------------------------

def test_live_view_puts_each_worker_in_its_column_under_a_header_of_names(capsys):
    view = LiveView(["Alice", "Bob"], color=False, quiet=False, width=80)
    view.token("Alice", "one line\n")
    view.token("Bob", "another\n")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[Alice]".ljust(view.col) + " │ [Bob]"  # the names over their columns, once
    assert out[1] == "one line".ljust(view.col) + " │"  # the rule goes on beside the others' blank cells
    assert out[2] == " " * view.col + " │ another"


def test_live_view_without_colour_tells_three_columns_apart_by_their_rules(capsys):
    view = LiveView(["Alice", "Bob", "Carol"], color=False, quiet=False, width=100)
    view.token("Bob", "middle\n")
    lines = capsys.readouterr().out.splitlines()
    assert "\x1b[" not in "".join(lines)
    assert [line.count("│") for line in lines] == [2, 2]
    assert lines[1] == " " * view.col + SEPARATOR + "middle".ljust(view.col) + " │"


def test_live_view_breaks_column_lines_between_words(capsys):
    view = LiveView(["Alice", "Bob"], color=False, quiet=False, width=80)  # columns of 38
    words = "the bakery sells muffins in boxes of six and bakes nine boxes on Monday 1234567"
    view.token("Alice", words)
    view.flush()
    lines = [line.split(" │")[0].rstrip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert all(len(line) <= view.col for line in lines)
    assert " ".join(lines).split() == words.split()  # no word cut in two
    assert wrap("x" * 10, 4) == ["xxxx", "xxxx", "xx"]  # only a word longer than the column is cut


def test_live_view_ends_only_the_finishing_workers_line(capsys):
    view = LiveView(["Alice", "Bob"], color=False, quiet=False, width=40)
    view.token("Alice", "half a li")
    view.token("Bob", "done.")
    view.flush("Bob")
    assert capsys.readouterr().out == "[Bob] done.\n"  # Alice's unfinished line waits for the rest
    view.token("Alice", "ne\n")
    assert capsys.readouterr().out == "[Alice] half a line\n"


def test_live_view_labels_lines_with_name_and_step_on_a_narrow_terminal_or_a_pipe(capsys):
    for width in (40, None):
        view = LiveView(["Alice", "Bob"], color=False, quiet=False, width=width)
        view.token("Bob", "hello\n")
        view.step_start(StepStart("Bob", 2, "**Bob [2]:** "))
        view.token("Bob", "again\n")
        assert capsys.readouterr().out == "[Bob] hello\n[Bob #2] again\n"


def test_live_view_shows_step_headers_and_the_self_check_question(capsys):
    question = "Quick self-check: is someone else already doing what I am doing? (yes/no): "
    view = LiveView(["Alice", "Bob"], color=False, quiet=False, width=100)
    view.step_start(StepStart("Bob", 3, "**Bob [3]:** ", question, check=True))
    view.token("Bob", " no.\n")
    lines = capsys.readouterr().out.splitlines()
    cells = [line.split(SEPARATOR, 1)[1].rstrip() if SEPARATOR in line else "" for line in lines[1:]]
    assert cells[0] == "[Bob #3]"
    assert " ".join(cells[1:-1]) == "» " + question.strip()  # wrapped in Bob's column
    assert cells[-1] == "no."
    narrow = LiveView(["Alice", "Bob"], color=False, quiet=False, width=None)
    narrow.step_start(StepStart("Alice", 4, "**Alice [4]:** ", question, check=True))
    assert capsys.readouterr().out == f"[Alice #4] » {question.strip()}\n"


def test_live_view_paints_workers_when_coloured_and_prints_nothing_when_quiet(capsys):
    LiveView(["Alice", "Bob"], color=True, quiet=False, width=None).token("Bob", "hi\n")
    assert "\x1b[35m" in capsys.readouterr().out  # Bob: magenta
    quiet = LiveView(["Alice", "Bob"], color=False, quiet=True, width=80)
    quiet.step_start(StepStart("Bob", 1, "", "Hi, Bob here."))
    quiet.token("Bob", "hi\n")
    quiet.close()
    assert capsys.readouterr().out == ""


# --- the status line ----------------------------------------------------------------------------------

def test_status_line_is_rewritten_in_place_at_most_every_interval_and_cleared():
    now = [0.0]
    err = io.StringIO()
    status = StatusLine(err, interval=0.25, width=40, clock=lambda: now[0])
    status.update("step 1/10")
    status.update("step 2/10")  # too soon: not drawn
    now[0] = 0.3
    status.update("step 3/10 " + "x" * 60)
    assert err.getvalue() == "\r\x1b[Kstep 1/10" + "\r\x1b[K" + ("step 3/10 " + "x" * 60)[:39]
    status.clear()
    assert err.getvalue().endswith("\r\x1b[K") and status.text == ""


def test_live_view_hides_the_status_line_while_it_prints_a_line(capsys):
    err = io.StringIO()
    status = StatusLine(err, width=80, shares_screen=True)
    view = LiveView(["Alice", "Bob"], color=False, quiet=False, width=None, status=status)
    view.step_start(StepStart("Alice", 1, "**Alice [1]:** "))
    view.token("Alice", "x")
    view.progress(DecodeProgress(1, 64, 700, 8192))
    drawn = err.getvalue()
    assert "step 1/64" in drawn and "tok/s" in drawn and "context 700/8192 (9%)" in drawn
    view.token("Alice", "yz\n")
    assert capsys.readouterr().out == "[Alice #1] xyz\n"
    assert err.getvalue()[len(drawn):] == "\r\x1b[K" + status.text  # erased for the line, then drawn again
    view.close()
    assert err.getvalue().endswith("\r\x1b[K")


def test_run_shows_a_status_line_on_a_terminal_and_clears_it_before_the_timing_block(one_layer):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", str(one_layer), "-", "-n", "40", *FAST],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=slave,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(slave)
    proc.stdin.write(PROBLEM.encode())
    proc.stdin.close()
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=120) == 0, err.decode(errors="replace")
    err = err.decode(errors="replace")
    assert "\r\x1b[Kstep 1/40 · " in err and " tok/s · context " in err
    cleared = err.rindex("\r\x1b[K")
    assert cleared < err.index("load:") and "tok/s ·" not in err[cleared:]  # gone before the block, not redrawn
    assert "\x1b[K" not in out and "answer:" in out  # stdout (a pipe) has no status line


def test_no_status_line_when_stderr_is_not_a_terminal(one_layer):
    res = invoke("run", one_layer, "-", "-n", "4", *FAST)
    assert res.exit_code == 0 and "\x1b[K" not in res.output and "step 1/4" not in res.output


# --- --json ------------------------------------------------------------------------------------------

def test_json_streams_one_event_object_a_line_and_nothing_else(one_layer, short_steps):
    res = invoke("run", one_layer, "-", "-n", "20", *FAST, "--json")
    assert res.exit_code == 3, res.output  # no answer from random weights: the exit code says so, as --quiet's
    records = [json.loads(line) for line in res.stdout.splitlines()]  # every line is one JSON object
    kinds = [r["event"] for r in records]
    assert set(kinds) == {"step_start", "token", "step", "done"} and kinds[-1] == "done" and kinds.count("done") == 1
    tokens = [r for r in records if r["event"] == "token"]
    assert all(set(r) == {"event", "worker", "token", "text"} and isinstance(r["token"], int) for r in tokens)
    done = records[-1]
    for name in ("Alice", "Bob"):  # the texts are what the events streamed
        finished = [r for r in records if r["event"] == "step" and r["worker"] == name]
        opened = [r for r in records if r["event"] == "step_start" and r["worker"] == name]
        assert [r["step"] for r in opened] == list(range(1, len(finished) + 2))
        assert done["texts"][name].startswith("".join(r["text"] for r in finished))  # its steps, in order
        assert done["timing"]["worker_steps"][name] == len(finished) > 0
        assert done["timing"]["generated"][name] == len([t for t in tokens if t["worker"] == name])
    assert done["reason"] == "budget" and done["answer"] is None and done["timing"]["steps"] == 20
    assert "load:" not in res.stderr and "answer:" not in res.stdout  # no timing block, no answer line


def test_the_readme_documents_every_field_of_the_json_stream(one_layer, short_steps):
    res = invoke("run", one_layer, "-", "-n", "20", *FAST, "--json")
    records = [json.loads(line) for line in res.stdout.splitlines()]
    section = (ROOT / "README.md").read_text().split("**`--json`**")[1].split("**`--transcript")[0]
    for kind in ("step_start", "token", "step", "done"):
        real = next(r for r in records if r["event"] == kind)
        example = next(line for line in section.splitlines() if line.startswith(f'{{"event": "{kind}"'))
        assert set(real) <= set(re.findall(r'"(\w+)":', example)), kind
    for key in records[-1]["timing"]:
        assert f"`{key}`" in section, key
