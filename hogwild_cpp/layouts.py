"""How workers see each other (paper §3.2): the order of the blocks in each worker's view.

Every view starts with the prompt and the shared history of finished steps and ends with the
worker's own unfinished step (llama.cpp's rule: a sequence's next token follows its last position).
What lies between is the layout's:

- combined: a header, then every other worker's unfinished step, each after a separator block of
  its own (written with the step's first tokens, so it moves with its step), then the worker's own;
- stepwise: nothing: a worker sees the others' steps once they are finished;
- contiguous: the other workers' unfinished steps.

In every layout a finished step joins the history at the same place in every view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class WorkerBlocks(Protocol):
    """What a layout needs of a worker: the blocks of its unfinished step."""

    step: object       # a cache Block (with an `id`)
    separator: object  # a cache Block, or None where the layout has no separators


@dataclass(frozen=True)
class Layout:
    name: str
    summary: str        # one line, for --help
    prompt_text: str    # what a worker is told it sees (system prompt; our own wording)
    header: bool        # a header block between the history and the unfinished steps
    separators: bool    # each unfinished step after a separator block of its own
    shows_others: bool  # the others' unfinished steps are in the view

    def view(self, me: WorkerBlocks, workers: list[WorkerBlocks], prompt: int, history: list[int],
             header: int | None = None) -> list[int]:
        """Block ids of `me`'s view; `workers` in their order (the others come in that order)."""
        def blocks(w):
            return [w.separator.id, w.step.id] if self.separators else [w.step.id]

        others = [b for w in workers if w is not me for b in blocks(w)] if self.shows_others else []
        return [prompt, *history, *([header] if self.header else []), *others, *blocks(me)]


COMBINED = Layout(
    name="combined",
    summary="history, then everyone's unfinished step (yours last)",
    prompt_text="Finished steps of everyone appear in order at the top; below them, under a header, every "
                "assistant's unfinished step, with your own current step last.",
    header=True, separators=True, shows_others=True)

STEPWISE = Layout(
    name="stepwise",
    summary="history of finished steps, then your unfinished step",
    prompt_text="You see the finished steps of everyone, in the order they were finished, then your own "
                "current step.",
    header=False, separators=False, shows_others=False)

CONTIGUOUS = Layout(
    name="contiguous",
    summary="history, the others' unfinished steps, then yours",
    prompt_text="You see what the others are writing right now, then your own text at the end.",
    header=False, separators=False, shows_others=True)

LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (COMBINED, STEPWISE, CONTIGUOUS)}
