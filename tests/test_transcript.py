"""`hogwild run --transcript FILE.md|FILE.html` (issue 17, item 4): the run as a person reads it."""

import re
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

import cli
from hogwild_cpp import Settings
from hogwild_cpp import protocol as P
from hogwild_cpp.engine import Result, StepEvent, StepStart, TokenEvent
from hogwild_cpp.transcript import StepLog, html_page, markdown

PROBLEM = "A baker makes 12 muffins in the morning and 5 more in the afternoon. How many muffins?"
FAST = ["--temp", "0", "-t", "1", "-c", "8192"]
CHECK = "Quick self-check: is someone else already doing what I am doing? (yes/no): "


def invoke(*args, input=PROBLEM):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


@pytest.fixture
def short_steps(monkeypatch):
    """Random weights never end a step: here one ends once it holds 12 characters."""
    monkeypatch.setattr(P, "step_finished", lambda text: len(text) >= 12)


def two_workers_log() -> StepLog:
    """Alice finishes step 1, Bob finishes step 1 then opens step 2 with the self-check and writes \\boxed{17}
    into it; Alice's step 2 is still being written."""
    log = StepLog()
    events = [StepStart("Alice", 1, "**Alice [1]:** ", "Hi, Alice here."), StepStart("Bob", 1, "**Bob [1]:** "),
              TokenEvent("Bob", 1, " 12 + 5"), TokenEvent("Alice", 2, " I take <the sum> & check"),
              TokenEvent("Bob", 3, " is 17.\n\n"), StepEvent("Bob", 1, "**Bob [1]:** 12 + 5 is 17.\n\n"),
              StepStart("Bob", 2, "**Bob [2]:** ", CHECK, check=True),
              TokenEvent("Alice", 4, ".\n\n"),
              StepEvent("Alice", 1, "**Alice [1]:** Hi, Alice here. I take <the sum> & check.\n\n"),
              StepStart("Alice", 2, "**Alice [2]:** "), TokenEvent("Alice", 5, " Agreed"),
              TokenEvent("Bob", 6, " no. \\boxed{17}\n\n"),
              StepEvent("Bob", 2, "**Bob [2]:** " + CHECK + " no. \\boxed{17}\n\n")]
    for ev in events:
        log.add(ev)
    return log


RESULT = Result(answer="17", reason="answer", texts={}, transcript="", answer_source="worker", answer_worker="Bob",
                steps=9)
SETTINGS = Settings(workers=2, max_steps=64)


def test_steps_come_in_the_order_they_were_finished_with_the_unfinished_last():
    steps = two_workers_log().steps()
    assert [(s.worker, s.number, s.finished) for s in steps] == [
        ("Bob", 1, True), ("Alice", 1, True), ("Bob", 2, True), ("Alice", 2, False)]
    assert steps[1].opening == "Hi, Alice here." and steps[1].text == " I take <the sum> & check.\n\n"
    assert steps[2].check and steps[2].text == " no. \\boxed{17}\n\n"  # the question apart from the reply
    assert steps[3].text == " Agreed"


def test_markdown_transcript_has_the_problem_every_step_and_how_the_answer_was_reached():
    md = markdown(PROBLEM, RESULT, two_workers_log().steps(), ["Alice", "Bob"], "m.gguf", SETTINGS)
    assert "## Problem\n\n> A baker makes 12 muffins" in md
    headings = re.findall(r"^### (.*)$", md, re.MULTILINE)
    assert headings == ["Bob · step 1", "Alice · step 1", "Bob · step 2",
                        "Alice · step 2 (unfinished when the run ended)"]
    assert f"*{CHECK.strip()}* no. \\boxed{{17}}" in md  # the engine's question, then Bob's reply
    assert md.rstrip().endswith("**17**: written by Bob in step 2 (stop: answer).")
    assert "m.gguf · 2 workers (Alice, Bob) · combined layout · 9 of 64 decode steps" in md


def test_a_finisher_answer_and_no_answer_say_so():
    forced = Result(answer="12", reason="budget", texts={}, transcript="", answer_source="finisher",
                    finisher="12}.")
    md = markdown(PROBLEM, forced, [], ["Alice", "Bob"], "m.gguf", SETTINGS)
    assert "**12**: forced by the finisher after everyone's text (stop: budget)." in md
    none = Result(answer=None, reason="interrupted", texts={}, transcript="")
    assert "none: no answer (stop: interrupted)." in markdown(PROBLEM, none, [], ["A"], "m.gguf", SETTINGS)


class _Page(HTMLParser):
    """What an HTML page refers to outside itself, and its text."""

    def __init__(self):
        super().__init__()
        self.external, self.tags, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.external += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_data(self, data):
        self.text.append(data)


def test_html_transcript_is_self_contained_escaped_and_coloured_per_worker():
    problem = "Is 2 < 3 & 5 > 4? <script>alert(1)</script>"
    page = html_page(problem, RESULT, two_workers_log().steps(), ["Alice", "Bob"], "m.gguf", SETTINGS)
    parsed = _Page()
    parsed.feed(page)
    assert parsed.external == [] and "script" not in parsed.tags and "link" not in parsed.tags
    assert "<style>" in page and "@import" not in page and "url(" not in page
    text = "".join(parsed.text)
    assert problem in text and "I take <the sum> & check." in text  # escaped in the file, whole when read
    assert "&lt;script&gt;" in page and "&lt;the sum&gt; &amp; check" in page
    alice, bob = re.findall(r'<section class="step[^"]*" style="--c:(#[0-9a-f]{6})"><h3>(\w+)', page)[:2][::-1]
    assert alice[1] == "Alice" and bob[1] == "Bob" and alice[0] != bob[0]  # each worker its own colour
    assert all(c == alice[0] for c, w in re.findall(r'style="--c:(#[0-9a-f]{6})"><h3>(\w+)', page) if w == "Alice")
    assert f'<span style="color:{bob[0]}"><strong>17</strong></span>: written by Bob in step 2' in page


def test_run_writes_the_transcript_of_what_happened(one_layer, tmp_path, short_steps):
    md, html = tmp_path / "run.md", tmp_path / "run.html"
    res = invoke("run", one_layer, "-", "-n", "30", *FAST, "--transcript", md)
    assert res.exit_code == 0, res.output
    text = md.read_text()
    assert f"> {PROBLEM}" in text
    numbers = {w: [int(n) for n in re.findall(rf"^### {w} · step (\d+)", text, re.MULTILINE)]
               for w in ("Alice", "Bob")}
    assert all(n == list(range(1, len(n) + 1)) and len(n) >= 2 for n in numbers.values())  # each in order
    assert "*Hi, Alice here. I suggest we divide the work like this:*" in text  # the engine's opener
    assert re.search(r"^## Answer\n\n.*\(stop: budget\)\.$", text, re.MULTILINE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.md"]  # no temporary file left
    res = invoke("run", one_layer, "-", "-n", "30", *FAST, "--transcript", html)
    assert res.exit_code == 0 and html.read_text().startswith("<!doctype html>")


@pytest.mark.parametrize("which", ["output", "trace", "prompt", "suffix"])
def test_a_transcript_that_collides_or_is_not_md_or_html_is_refused(one_layer, tmp_path, which):
    prompt = tmp_path / "p.md"
    prompt.write_text(PROBLEM)
    flags = {"output": ["--transcript", tmp_path / "x.md", "--output", tmp_path / "x.md"],
             "trace": ["--trace", tmp_path / "x.html", "--transcript", tmp_path / "x.html"],
             "prompt": ["--transcript", prompt], "suffix": ["--transcript", tmp_path / "x.txt"]}[which]
    res = invoke("run", one_layer, prompt, "-n", "2", *FAST, *flags)
    message = {"output": "is also the --output file", "trace": "is also the --trace file",
               "prompt": "is the prompt file: it would be overwritten", "suffix": "name a .md or .html file"}[which]
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert prompt.read_text() == PROBLEM and sorted(p.name for p in tmp_path.iterdir()) == ["p.md"]
