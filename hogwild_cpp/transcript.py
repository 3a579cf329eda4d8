"""`hogwild run --transcript FILE.md|FILE.html`: the run as a person reads it. The problem, every
worker's steps with their numbers in the order they were finished (the order of the shared history;
the steps still being written when the run ended come last, marked so), then the answer and how it
was reached: written by a worker (which one, in which step) or forced by the finisher at the budget.

What the engine wrote into a step (the first step's opener, the self-check question) is shown apart
from what the worker wrote after it. The HTML is one self-contained file (inline CSS, no script, no
external asset), each worker in its colour, every text HTML-escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from .engine import StepEvent, StepStart, TokenEvent

FORMATS = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}
# the terminal's colours (view.COLORS), dark enough to read on white
HTML_COLORS = ["#00838f", "#ad1457", "#9a7000", "#2e7d32", "#1565c0", "#c62828", "#0097a7", "#d81b60"]


def format_of(path: Path) -> str | None:
    """"md" or "html" from the file's suffix; None for any other."""
    return FORMATS.get(Path(path).suffix.lower())


@dataclass
class Step:
    worker: str
    number: int
    opening: str = ""        # what the engine wrote after the label: the opener or the self-check question
    check: bool = False
    text: str = ""           # what the worker wrote
    finished: bool = False
    pieces: list[str] = field(default_factory=list, repr=False)


class StepLog:
    """Every step of a run, from the engine's events (StepStart, TokenEvent, StepEvent)."""

    def __init__(self):
        self.finished: list[Step] = []
        self.current: dict[str, Step] = {}
        self.labels: dict[str, str] = {}  # each current step's label and opening, as the engine wrote them

    def add(self, ev) -> None:
        if isinstance(ev, StepStart):
            self.current[ev.worker] = Step(ev.worker, ev.step, ev.opening, ev.check)
            self.labels[ev.worker] = ev.label + ev.opening
        elif isinstance(ev, TokenEvent) and ev.worker in self.current:
            self.current[ev.worker].pieces.append(ev.text)
        elif isinstance(ev, StepEvent) and ev.worker in self.current:
            step, opened = self.current.pop(ev.worker), self.labels.pop(ev.worker)
            # the step's own detokenized text (whole characters even where a token holds part of one); a
            # tokenizer may put a space before it
            before, found, after = ev.text.partition(opened)
            step.text = after if found and not before.strip() else "".join(step.pieces)
            step.finished = True
            self.finished.append(step)

    def steps(self) -> list[Step]:
        """The finished steps in the order they were finished, then the unfinished ones with any text."""
        unfinished = []
        for step in self.current.values():
            step.text = "".join(step.pieces)
            if step.text.strip():
                unfinished.append(step)
        return [*self.finished, *unfinished]


def how_reached(result, steps: list[Step]) -> str:
    """How the run ended and who wrote the answer, in words."""
    if result.answer_source == "worker":
        where = [s.number for s in steps if s.worker == result.answer_worker and "\\boxed" in s.text]
        return f"written by {result.answer_worker}" + (f" in step {where[-1]}" if where else "") + \
            f" (stop: {result.reason})"
    if result.answer_source == "finisher":
        return f"forced by the finisher after everyone's text (stop: {result.reason})"
    return f"no answer (stop: {result.reason})"


def _about(model: str, names: list[str], settings, result) -> str:
    return (f"{model} · {len(names)} workers ({', '.join(names)}) · {settings.layout} layout · "
            f"{result.steps} of {settings.max_steps} decode steps · seed {settings.seed}, temperature "
            f"{settings.temp}")


def markdown(problem: str, result, steps: list[Step], names: list[str], model: str, settings) -> str:
    out = ["# Hogwild! transcript", "", _about(model, names, settings, result), "", "## Problem", ""]
    out += [f"> {line}".rstrip() for line in problem.strip().splitlines()]
    out += ["", "## Steps", ""]
    for s in steps:
        out += [f"### {s.worker} · step {s.number}" + ("" if s.finished else " (unfinished when the run ended)"),
                ""]
        opening = f"*{s.opening.strip()}* " if s.opening.strip() else ""
        out += [(opening + s.text.strip()).strip() or "*(empty)*", ""]
    answer = f"**{result.answer}**" if result.answer is not None else "none"
    out += ["## Answer", "", f"{answer}: {how_reached(result, steps)}."]
    if result.answer_source == "finisher" and result.finisher:
        out += ["", f"What the finisher wrote after its lead-in: `{result.finisher.strip()}`"]
    return "\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
line-height:1.5;color:#222;background:#fff}
.about{color:#555}
.text{white-space:pre-wrap;overflow-wrap:anywhere}
.problem{border-left:.3rem solid #999;padding:.4rem .8rem;background:#f4f4f4}
.step{border-left:.3rem solid var(--c);padding:.3rem .8rem;margin:.8rem 0;background:#fafafa}
.step h3{color:var(--c);margin:0 0 .2rem;font-size:1rem}
.step.unfinished{opacity:.75}
.engine{font-style:italic;color:#666}
.answer{font-size:1.2rem}
""".strip()


def html_page(problem: str, result, steps: list[Step], names: list[str], model: str, settings) -> str:
    e = html.escape
    color = {n: HTML_COLORS[i % len(HTML_COLORS)] for i, n in enumerate(names)}
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>Hogwild! transcript</title>", f"<style>\n{_CSS}\n</style></head><body>",
           "<h1>Hogwild! transcript</h1>", f'<p class="about">{e(_about(model, names, settings, result))}</p>',
           "<h2>Problem</h2>", f'<div class="problem text">{e(problem.strip())}</div>', "<h2>Steps</h2>"]
    for s in steps:
        status = "" if s.finished else " (unfinished when the run ended)"
        opening = f'<span class="engine">{e(s.opening.strip())}</span> ' if s.opening.strip() else ""
        out.append(f'<section class="step{"" if s.finished else " unfinished"}" style="--c:{color[s.worker]}">'
                   f"<h3>{e(s.worker)} · step {s.number}{status}</h3>"
                   f'<div class="text">{opening}{e(s.text.strip())}</div></section>')
    answer = "none" if result.answer is None else f"<strong>{e(result.answer)}</strong>"
    if result.answer_source == "worker" and result.answer_worker in color:
        answer = f'<span style="color:{color[result.answer_worker]}">{answer}</span>'
    out += ["<h2>Answer</h2>", f'<p class="answer">{answer}: {e(how_reached(result, steps))}.</p>']
    if result.answer_source == "finisher" and result.finisher:
        out.append(f'<p>What the finisher wrote after its lead-in: <code>{e(result.finisher.strip())}</code></p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render(path: Path, problem: str, result, log: StepLog, names: list[str], model: str, settings) -> str:
    """The transcript in the format FILE's suffix names (format_of)."""
    page = html_page if format_of(path) == "html" else markdown
    return page(problem, result, log.steps(), names, model, settings)
