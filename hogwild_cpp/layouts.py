"""How workers see each other (paper §3.2): the order of the blocks in each worker's view.

A view is a list of cache blocks; the worker's own current step is always last (llama.cpp's rule:
a sequence's next token follows its last position). With W workers in their order, the view of
worker X is ("others": the workers other than X, in their order):

- combined    prompt, history header, the finished steps of everyone (finishing order), others header,
              for each other worker Y: Y's current step, Y's marker; X's own header, X's current step
- stepwise    prompt, history header, the finished steps of everyone (finishing order), X's current step
- contiguous  prompt, for each other worker Y: Y's workspace (all its steps, finished and current),
              Y's marker; X's own-workspace header, X's workspace (its current step last)

A marker says "still being written" after an unfinished step; its text, and every header's, come
from the protocol (protocol.toml), and a block whose text is empty is left out. A finished step
keeps its block: in combined and stepwise it joins the shared history (at the same place in every
view), in contiguous it stays in its writer's workspace.

The finisher (at the budget) reads everyone's text, nobody's own: `full_view` — prompt, history
header, history, others header, then every worker's current step followed by its marker
(contiguous: prompt, then every workspace followed by its marker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class WorkerBlocks(Protocol):
    """What a layout reads of a worker. `step` is a cache Block (with an `id`); a worker may also have
    `marker` and `own_header` (Blocks or None) and `done` (ids of its finished steps: its workspace
    before the current step, contiguous only). Those missing count as absent."""

    step: object


def _id(block) -> int | None:
    return None if block is None else block.id


def _add(ids: list[int], i: int | None) -> None:
    if i is not None:
        ids.append(i)


@dataclass(frozen=True)
class Layout:
    name: str
    summary: str          # one line, for --help
    history: bool         # finished steps join a shared history, under the history header
    header: bool          # the others header, between the history and the unfinished steps
    shows_others: bool    # the others' unfinished work is in the view
    markers: bool         # each other worker's unfinished work is followed by its marker
    own_header: bool      # the worker's own header (contiguous: own-workspace header) before its own work
    separators: bool = False  # no layout has per-step separator blocks any more (headers and markers end
    # with a blank line); kept for code that builds views itself

    def view(self, me: WorkerBlocks, workers: list[WorkerBlocks], prompt: int, history: list[int],
             header: int | None = None, history_header: int | None = None) -> list[int]:
        """Block ids of `me`'s view; `workers` in their order; `header`: the others header's id.

        Only the ids that may be absent are checked one by one: the history and the workspaces (which
        grow with the run) are joined whole."""
        ids: list[int] = []
        _add(ids, prompt)
        if self.history:
            _add(ids, history_header)
            ids += history
        if self.header:
            _add(ids, header)
        if self.shows_others:
            for w in workers:
                if w is not me:
                    ids += self._done(w)
                    ids.append(w.step.id)
                    if self.markers:
                        _add(ids, _id(getattr(w, "marker", None)))
        if self.own_header:
            _add(ids, _id(getattr(me, "own_header", None)))
        ids += self._done(me)
        ids.append(me.step.id)
        return ids

    def full_view(self, workers: list[WorkerBlocks], prompt: int, history: list[int], header: int | None = None,
                  history_header: int | None = None) -> list[int]:
        """Everyone's text, as the finisher reads it: each worker's unfinished work followed by its marker."""
        ids = [prompt]
        if self.history:
            ids += [history_header, *history, header]
        for w in workers:
            ids += [*self._done(w), w.step.id, _id(getattr(w, "marker", None))]
        return [i for i in ids if i is not None]

    def _done(self, w) -> list[int]:
        return [] if self.history else list(getattr(w, "done", ()))


COMBINED = Layout(
    name="combined",
    summary="history, then the others' unfinished steps (each with a marker), then yours",
    history=True, header=True, shows_others=True, markers=True, own_header=True)

STEPWISE = Layout(
    name="stepwise",
    summary="history of finished steps, then your unfinished step",
    history=True, header=False, shows_others=False, markers=False, own_header=False)

CONTIGUOUS = Layout(
    name="contiguous",
    summary="one workspace per worker (all its steps): the others' first, yours last",
    history=False, header=False, shows_others=True, markers=True, own_header=True)

LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (COMBINED, STEPWISE, CONTIGUOUS)}
