"""`hogwild run --json`: the run's events as JSON Lines on stdout, one object a line, for scripts.

    {"event": "step_start", "worker": "Bob", "step": 3, "label": "**Bob [3]:** ", "opening": "...", "check": true}
    {"event": "token", "worker": "Bob", "token": 1234, "text": " the"}
    {"event": "step", "worker": "Bob", "step": 3, "text": "**Bob [3]:** ... the whole step"}
    {"event": "done", "answer": "17", "reason": "answer", "answer_source": "worker", "answer_worker": "Bob",
     "finisher": "", "texts": {...}, "timing": {...}}

`step_start`: what the engine wrote to open a worker's step (its label, then the first step's opener or
the self-check question; `check` says which); `token`: a token a worker sampled and its text; `step`: a
worker's finished step, labels included; `done`: the end, with the timing block's numbers
(timing.Timing.to_dict). Nothing else goes to stdout.
"""

from __future__ import annotations

import json
import sys

from .engine import StepEvent, StepStart, TokenEvent


def event_record(ev) -> dict | None:
    """The JSON object of one of the engine's events; None for those not in the stream."""
    if isinstance(ev, TokenEvent):
        return {"event": "token", "worker": ev.worker, "token": ev.token, "text": ev.text}
    if isinstance(ev, StepStart):
        return {"event": "step_start", "worker": ev.worker, "step": ev.step, "label": ev.label,
                "opening": ev.opening, "check": ev.check}
    if isinstance(ev, StepEvent):
        return {"event": "step", "worker": ev.worker, "step": ev.step, "text": ev.text}
    return None


def done_record(result, timing: dict) -> dict:
    return {"event": "done", "answer": result.answer, "reason": result.reason,
            "answer_source": result.answer_source, "answer_worker": result.answer_worker,
            "finisher": result.finisher, "texts": result.texts, "timing": timing}


class JsonLines:
    """Writes event_record(ev) for each event, one line each, flushed at once (a script reads as it goes)."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout

    def event(self, ev) -> None:
        record = event_record(ev)
        if record is not None:
            self._write(record)

    def done(self, result, timing: dict) -> None:
        self._write(done_record(result, timing))

    def close(self) -> None:
        pass

    def _write(self, record: dict) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()
