"""The step loop: one batched llama_decode per step for all workers over one shared KV cache.

The engine prints nothing: `Engine.stream` yields events (tokens, finished steps, progress, done);
the CLI and the Python API consume them. A run goes: `_prefill` (the prompt and the layout's
headers and markers, once), then per step `_decode_step` (every worker's pending tokens in one
decode) and `_advance` (each worker samples, or its finished step is committed), then, at the
budget without an answer, `_finish` (the finisher reads everyone's text and writes the answer).

Sequences: worker w is sequence w; sequence W is the *keeper*, which never decodes during the run.
It holds the blocks that sit at a different place in every view and move every step (markers, own
headers) at the place they were written, so that no fold (a K-shift of the cache) is ever issued
for them, and the blocks only the finisher reads; at the end the finisher writes through it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator

from . import protocol as P
from .cache import Block, SharedCache
from .errors import BadInput
from .layouts import LAYOUTS
from .native import Context, ContextConfig, ContextFull, Model, Sampler
from .settings import Settings
from .trace import TraceWriter

# the finisher's room, beyond its text and tokens: a few cells of slack for its decodes
FINISHER_MARGIN = 8

__all__ = ["Engine", "Settings", "Progress", "SetupProgress", "StepStart", "TokenEvent", "StepEvent", "DecodeProgress",
           "DoneEvent", "Result"]


@dataclass
class Progress:
    done: int
    total: int


@dataclass
class SetupProgress:
    """After the prompt: the workers whose layout blocks (marker, own header) are written, of all."""
    done: int
    total: int


@dataclass
class StepStart:
    """A worker's step begins: what the engine writes to open it, before the worker samples anything."""
    worker: str
    step: int
    label: str          # the step's prefix (protocol steps.prefix), e.g. "**Alice [3]:** "
    opening: str = ""   # after the label: the first step's opener, or the self-check question
    check: bool = False  # the self-check question opens this step


@dataclass
class TokenEvent:
    worker: str
    token: int
    text: str


@dataclass
class StepEvent:
    worker: str
    step: int
    text: str


@dataclass
class DecodeProgress:
    """After each parallel decode step: steps done of the budget, and the KV cells in use of the context's."""
    step: int
    total: int
    ctx_used: int
    ctx_size: int


@dataclass
class Result:
    answer: str | None
    reason: str                     # answer | budget | eos | ctx_full | interrupted
    texts: dict[str, str]           # each worker's steps, in order
    transcript: str                 # everyone's text: the prompt, the history, every current step
    prompt_tokens: int = 0
    prompt_s: float = 0.0
    generated: dict[str, int] = field(default_factory=dict)
    generate_s: float = 0.0
    steps: int = 0
    finisher: str = ""              # what the finisher wrote after its own text ("" if it did not run)
    answer_source: str | None = None    # "worker": written by a worker; "finisher": forced at the budget
    answer_worker: str | None = None    # the worker who wrote it
    decode_s: float = 0.0               # of generate_s: inside llama.cpp's decode of the steps (the rest is ours)
    boundary_s: float = 0.0             # of generate_s: the steps whose decode wrote more than a token for a worker
    boundary_steps: int = 0             # (a new step's label or a header: the step boundaries), and how many
    finished_steps: dict[str, int] = field(default_factory=dict)  # each worker's steps committed to the history


@dataclass
class DoneEvent:
    result: Result


@dataclass
class Worker:
    """Everything about one worker (its cache sequence id is its index), made in one place."""
    index: int
    name: str
    sampler: Sampler
    step_no: int = 0
    step: Block | None = None               # the step being written
    done: list[int] = field(default_factory=list)  # its finished steps (contiguous: its workspace)
    marker: Block | None = None             # after its unfinished step in the others' views
    own_header: Block | None = None         # before its own step (or workspace) in its own view
    pending: list[int] = field(default_factory=list)      # tokens for the next decode
    sampled: bool = False                   # pending is the token it sampled (not the labels of a new step)
    step_sampled: int = 0                   # tokens it sampled in the current step
    text: str = ""                          # the current step's text so far (what the worker sampled)
    finishing: bool = False                 # its last token is sampled: the step is committed once decoded
    generated: int = 0


class Engine:
    def __init__(self, model: Model, settings: Settings, trace_path=None, spare: bool = False):
        settings.check()
        s = settings
        self.model, self.s, self.layout = model, s, LAYOUTS[s.layout]
        self.protocol = P.resolve(s.protocol)
        p = self.protocol
        self.instructions_in = s.instructions_in or p["prompt.instructions_in"]
        self.check_every = p["check.every"] if s.check_every is None else s.check_every
        self.finisher_tokens = p["finisher.tokens"] if s.finisher_tokens is None else s.finisher_tokens
        names = s.names or P.default_names(s.workers)
        n_ctx = s.n_ctx or min(model.n_ctx_train, 8192)
        self.keeper = s.workers  # the sequence that holds blocks for the views and writes the finisher
        self.trace = TraceWriter(trace_path) if trace_path else None  # first: an unwritable path costs nothing
        try:
            self.ctx = Context(model, ContextConfig(n_ctx=n_ctx, n_batch=s.n_batch, n_seq_max=s.workers + 1 + spare,
                                                    n_threads=s.threads, type_k=s.cache_type_k,
                                                    type_v=s.cache_type_v, flash_attn=s.flash_attn))
        except BaseException:
            if self.trace is not None:
                self.trace.discard()
            raise
        self.cache = SharedCache(self.ctx, s.workers + 1 + spare)
        self.spare = s.workers + 1 if spare else None  # a sequence for answer_now's finisher (hogwild eval)
        self.thinking = P.thinking_section(model.chat_template(), p)
        special = model.special_tokens()
        banned = {t for k, t in special.items() if k != "eos" or not s.stop_on_eos}
        self.think_end = None
        if self.thinking is not None:  # the workers write inside the thinking section: they must not close it
            end = model.tokenize(self.thinking.close.strip(), parse_special=True)
            if len(end) == 1:
                self.think_end = end[0]
                banned.add(end[0])
        self.banned = sorted(banned)
        # cells the steps leave free, so that the finisher's text and tokens still fit when the context fills
        self.finisher_room = (len(model.tokenize(p.finisher_text(self.thinking))) + self.finisher_tokens
                              + FINISHER_MARGIN if self.finisher_tokens > 0 else 0)
        self.workers = [Worker(w, name, Sampler(model.n_vocab, s.temp, s.top_k, s.top_p, s.min_p, s.seed + w,
                                                self.banned))
                        for w, name in enumerate(names)]
        self.names = names
        self.examples = p.example_answers(names, self.layout)  # \boxed{} contents of our own texts
        self.stop_requested = False
        self.prompt: Block | None = None
        self.history_header: Block | None = None
        self.others_header: Block | None = None
        self.history: list[int] = []
        self.finished_tokens = 0
        self.checks_done = 0
        self.decode_s = 0.0
        self.boundary_s, self.boundary_steps = 0.0, 0  # steps at step boundaries (Result.boundary_s)
        self._views_stale = True  # the workers' views need laying out again (see _decode_step)
        self.on_step = None  # hogwild eval: called as on_step(engine, steps_done) before each step (None: off)

    # --- the loop -------------------------------------------------------------

    def stream(self, problem: str) -> Iterator:
        t0 = time.perf_counter()
        self._trace_header()
        yield from self._prefill(problem)
        prompt_s = time.perf_counter() - t0
        if self.workers[0].step is None:  # interrupted before the workers' first steps were begun
            yield DoneEvent(self._interrupted_early(prompt_s))
            return
        reason, answer, by, step, t1 = "budget", None, None, 0, time.perf_counter()
        n_steps = self.s.max_steps  # steps decoded (an interrupt before a step's decode does not count it)
        budget = range(self.s.max_steps) if self.s.max_steps > 0 else itertools.count()  # -1: no budget
        # a step's events go out once the next step's decode is queued: what the consumer does with them
        # (printing, a server's stream) overlaps the device's work instead of sitting between two decodes
        deferred: list = []
        for step in budget:
            if self.on_step is not None:
                self.on_step(self, step)
            if self.stop_requested:
                reason, n_steps = "interrupted", step
                break
            n_steps = step + 1
            t_step = time.perf_counter()
            decoded = self._decode_step(keep=self.finisher_room)
            if decoded is None:  # no room for the step's tokens or the copies attention needs
                reason = "ctx_full"
                break
            boundary = any(len(w.pending) > 1 for w in decoded[1])
            yield from deferred
            deferred = []
            self._wait()
            outputs, writers = decoded
            # every sampling worker's next token in one native call, over llama.cpp's own logits
            sampling = [w for w in writers if not w.finishing]
            tokens = dict(zip([w.index for w in sampling],
                              self.ctx.sample([outputs[w.index] for w in sampling], [w.sampler for w in sampling])))
            for w in writers:
                finished = _collect(self._advance(w, step, tokens.get(w.index), outputs[w.index]), deferred)
                if finished is not None:
                    found = P.extract_boxed(finished, self.examples)
                    if found is not None:
                        answer, by = found, w.name
                elif self.model.is_eog(w.pending[0]) and self.s.stop_on_eos:
                    reason = "eos"
            deferred.append(DecodeProgress(n_steps, self.s.max_steps, self.cache.used_cells(), self.ctx.n_ctx))
            if boundary:
                self.boundary_s += time.perf_counter() - t_step
                self.boundary_steps += 1
            if answer is not None:
                reason = "answer"
                break
            if reason == "eos":
                break
        yield from deferred
        generate_s = time.perf_counter() - t1
        if answer is None:  # an answer in a step its writer had not finished yet
            for w in self.workers:
                found = P.extract_boxed(w.text, self.examples)
                if found is not None:
                    answer, by = found, w.name
        source = "worker" if answer is not None else None
        finisher, fin_block = "", None
        if reason in ("budget", "ctx_full") and answer is None and self.finisher_tokens > 0:
            # the workers' last sampled tokens (and fresh steps' labels) join their steps, if the finisher's room allows
            decoded = self._decode_step(keep=self.finisher_room)
            for w in decoded[1] if decoded else []:
                w.pending, w.sampled = [], False
            for w in self.workers:  # their views go: the finisher's alone holds every block, so the cache folds
                self.cache.set_view(w.index, [])  # its moves in place, with no per-view copies to find room for
            finisher, answer, fin_block = self._finish()
            source = "finisher" if answer is not None else None
        everyone = self._full_view() + ([fin_block.id] if fin_block is not None else [])
        result = Result(answer=answer, reason=reason, texts={w.name: self._worker_text(w) for w in self.workers},
                        transcript=self.model.detokenize([t for b in everyone for t in self.cache.blocks[b].tokens]),
                        prompt_tokens=len(self.prompt.tokens), prompt_s=prompt_s,
                        generated={w.name: w.generated for w in self.workers}, generate_s=generate_s,
                        steps=n_steps, finisher=finisher, answer_source=source, answer_worker=by,
                        decode_s=self.decode_s, boundary_s=self.boundary_s, boundary_steps=self.boundary_steps,
                        finished_steps={w.name: w.step_no - 1 for w in self.workers})
        if self.trace:
            self.trace.end(self.cache.blocks.values(), result.reason, result.answer, source, by)
        yield DoneEvent(result)

    # --- the prompt and the layout's blocks -------------------------------------

    def _prefill(self, problem: str) -> Iterator[Progress]:
        """The prompt (in chunks, with progress), the layout's headers and markers, every worker's first step.

        Written through the keeper: the prompt, the history header, and the blocks that move in the
        views every step (markers, and own headers when there are others) or that only the finisher
        reads. The others header and a lone worker's own header stay where the views hold them (they
        move only when a step is committed, and are folded then).
        """
        c, W, p, lay, k = self.cache, self.s.workers, self.protocol, self.layout, self.keeper
        toks = self.model.tokenize(self.prompt_text(problem), add_special=True)
        texts = {key: self.model.tokenize(p[f"layout.{key}"]) for key in
                 ("history_header", "others_header", "marker", "own_header", "own_workspace_header")}
        need = len(toks) + sum(map(len, texts.values())) * (W + 1) + 64 * W  # and a first step each
        if need > self.ctx.n_ctx:
            raise BadInput(f"the prompt ({len(toks)} tokens) and {W} workers do not fit the context "
                           f"({self.ctx.n_ctx} tokens): use -c {need} or more")
        self.prompt = c.new_block("prompt")
        kept = [self.prompt.id]
        c.set_view(k, kept)
        for i in range(0, len(toks), self.s.n_batch):
            if self.stop_requested and i:  # Ctrl-C: the rest of the prompt is left out, the run ends interrupted
                break
            c.decode({k: toks[i:i + self.s.n_batch]})
            yield Progress(min(i + self.s.n_batch, len(toks)), len(toks))

        def write(seq: int, view: list[int], kind: str, tokens: list[int], owner: str | None = None):
            if not tokens:
                return None
            b = c.new_block(kind, owner=owner)
            c.set_view(seq, [*view, b.id])
            c.decode({seq: tokens})
            view.append(b.id)
            return b

        if lay.history:  # the finisher reads the history under its header in every layout that has one
            self.history_header = write(k, kept, "history-header", texts["history_header"])
        if lay.header:  # held by the views, after the history
            view = list(kept)
            self.others_header = write(0, view, "others-header", texts["others_header"])
        elif lay.history:  # for the finisher only
            self.others_header = write(k, kept, "others-header", texts["others_header"])
        own_key = "own_header" if lay.history else "own_workspace_header"
        for w in self.workers:
            if self.stop_requested:  # Ctrl-C: no step is begun, the run ends interrupted (see stream)
                return
            w.marker = write(k, kept, "marker", texts["marker"], w.name)
            if lay.own_header and W > 1:
                w.own_header = write(k, kept, "own-header", texts[own_key], w.name)
            yield SetupProgress(w.index + 1, W)
        if lay.own_header and W == 1:  # held by the worker's view only: it moves only when the history grows
            w = self.workers[0]
            view = [i for i in (self.prompt.id, _id(self.history_header), _id(self.others_header)) if i is not None]
            w.own_header = write(0, view, "own-header", texts[own_key], w.name)
        for w in self.workers:
            yield self._new_step(w, check=False)

    def prompt_text(self, problem: str) -> str:
        """The prompt every worker reads first: the rules and the problem through the chat template."""
        return P.chat_prompt(self.model, self.names, self.layout, problem, self.protocol, self.instructions_in,
                             self.thinking, self.s.system_prompt)

    def _new_step(self, w: Worker, check: bool) -> StepStart:
        w.step_no += 1
        w.step = self.cache.new_block("step", owner=w.name)
        prefix, opening = self.protocol.step_prefix(w.name, w.step_no), ""
        if w.step_no == 1:
            opening = self.protocol.opener(self.names, w.index)
        elif check:
            opening = self.protocol.check_question(self.names, w.name)
        w.pending = self.model.tokenize(prefix + opening)  # the previous step ended with a blank line
        w.sampled, w.step_sampled = False, 0
        w.text = ""
        self._views_stale = True  # a view's blocks change only here: a new step (a commit begins one)
        return StepStart(w.name, w.step_no, prefix, opening, check and w.step_no > 1)

    def _view(self, w: Worker) -> list[int]:
        return self.layout.view(w, self.workers, self.prompt.id, self.history, _id(self.others_header),
                                _id(self.history_header))

    def _full_view(self) -> list[int]:
        """Everyone's text (the finisher's view). A step not written yet is left out, and so is its
        marker where the worker shows nothing else (a contiguous workspace keeps it)."""
        ids = self.layout.full_view(self.workers, self.prompt.id, self.history, _id(self.others_header),
                                    _id(self.history_header))
        hidden = set()
        for w in self.workers:
            if not w.step.tokens:
                hidden.add(w.step.id)
                if w.marker is not None and not (w.done and not self.layout.history):
                    hidden.add(w.marker.id)
        return [b for b in ids if b not in hidden]

    # --- a step -----------------------------------------------------------------

    def _decode_step(self, keep: int = 0) -> tuple[dict[int, int], list[Worker]] | None:
        """Every worker's pending tokens in one decode (each sees the others' tokens of this step): the
        output index of each writer's last token (Context.sample / Context.logits), and the writers;
        None if the cache has no room for them and `keep` cells more. Workers whose tokens would not fit
        one batch wait."""
        writers, n_new = [], 0
        for w in self.workers:
            if w.pending and (not writers or n_new + len(w.pending) <= self.s.n_batch):
                writers.append(w)
                n_new += len(w.pending)
        if self.cache.used_cells() + n_new + 2 * len(self.workers) + keep >= self.ctx.n_ctx:
            return None
        if self._views_stale:  # most steps only grow the blocks: the views stay as they were set
            for w in self.workers:
                self.cache.set_view(w.index, self._view(w))
            self._views_stale = False
        t0 = time.perf_counter()
        try:
            outputs = self.cache.decode({w.index: w.pending for w in writers}, copy_logits=False)
        except ContextFull:
            return None
        finally:
            self.decode_s += time.perf_counter() - t0
        return outputs, writers

    def _wait(self) -> None:
        """Wait for the queued decode on the device (llama_decode returns once a GPU's work is queued);
        counted as decoding."""
        t0 = time.perf_counter()
        self.ctx.synchronize()
        self.decode_s += time.perf_counter() - t0

    def _advance(self, w: Worker, step: int, tok: int | None, output: int):
        """After a decode: a finishing worker's step is committed (returns its text), the others take
        the token sampled for them (`tok`, from output `output` of the decode). Yields the events."""
        w.pending, w.sampled = [], False
        if w.finishing:
            return (yield from self._commit(w))
        w.generated += 1
        w.step_sampled += 1
        if self.trace:  # the view it was sampled from: what was just decoded, the others' tokens included
            self.trace.token(step, w.name, self.cache.view_prefixes(w.index), tok, self.ctx.logits(output),
                             self.model.piece(tok).decode("utf-8", errors="replace"))
        piece = self.model.piece(tok).decode("utf-8", errors="replace")
        w.pending, w.sampled = [tok], True
        w.text += piece
        every = self.s.bench_step_tokens
        w.finishing = P.step_finished(w.text) or bool(every) and w.step_sampled >= every
        yield TokenEvent(w.name, tok, piece)
        return None

    def _commit(self, w: Worker):
        """w's finished step joins the shared history (contiguous: stays in w's workspace); w starts
        its next step, opened with the self-check question when it is due. Returns the step's text."""
        text = w.text
        (self.history if self.layout.history else w.done).append(w.step.id)
        w.finishing = False
        yield StepEvent(w.name, w.step_no, self.model.detokenize(w.step.tokens))
        self.finished_tokens += len(w.step.tokens)
        every = self.check_every
        check = bool(every) and self.finished_tokens >= every * (self.checks_done + 1)
        if check:
            self.checks_done = self.finished_tokens // every
        yield self._new_step(w, check)
        return text

    # --- the end ------------------------------------------------------------------

    def _finish(self) -> tuple[str, str | None, Block | None]:
        """At the budget: the finisher's text after everyone's text (prompt, history, every worker's
        current step with its marker), then up to finisher_tokens greedy tokens, through the keeper,
        until the \\boxed{...} closes. Returns (what it wrote after its text, the answer, its block)."""
        if self.finisher_tokens <= 0:
            return "", None, None
        k = self.keeper
        block = self.cache.new_block("finisher")
        self.cache.set_view(k, self._full_view() + [block.id])
        banned = [t for t in self.banned if t != self.think_end]  # the finisher's own text closed the section
        greedy = Sampler(self.model.n_vocab, 0.0, banned=banned)
        lead = self.protocol.finisher_text(self.thinking)
        toks, text = self.model.tokenize(lead), ""
        answer = None
        try:
            for _ in range(self.finisher_tokens):
                if self.cache.used_cells() + len(toks) >= self.ctx.n_ctx:
                    break
                try:
                    logits = self.cache.decode({k: toks})[k]
                except ContextFull:
                    break
                tok = greedy.sample(logits)
                if self.trace:
                    self.trace.token(None, None, self.cache.view_prefixes(k), tok, logits,
                                     self.model.piece(tok).decode("utf-8", errors="replace"))
                if self.model.is_eog(tok):
                    break
                text += self.model.piece(tok).decode("utf-8", errors="replace")
                toks = [tok]
                answer = P.extract_boxed(lead + text, self.examples, ending_after=len(lead))
                if answer is not None:
                    break
        finally:
            greedy.close()
        return text, answer, block

    def answer_now(self) -> tuple[str | None, str | None, str | None, str]:
        """The answer the run would give if its budget ended here, mid-run, without changing the run:
        (answer, "worker" | "finisher" | None, the worker who wrote it, the finisher's text).

        A \\boxed{} in a worker's unfinished step counts as the worker's, as at the end of a run; else
        the finisher writes through the spare sequence (Engine(spare=True)) after everyone's text, and
        then the spare's view is emptied, so the next decode drops the finisher's cells (the others keep
        theirs) and the run goes on. Unlike the finisher at the end, it does not see each worker's last
        sampled token (not decoded yet).
        """
        for w in self.workers:
            found = P.extract_boxed(w.text, self.examples)
            if found is not None:
                return found, "worker", w.name, ""
        if self.finisher_tokens <= 0:
            return None, None, None, ""
        if self.spare is None:
            raise RuntimeError("answer_now needs Engine(spare=True)")
        keeper, self.keeper = self.keeper, self.spare  # _finish writes through self.keeper
        try:
            text, answer, _ = self._finish()
        finally:
            self.keeper = keeper
            self.cache.set_view(self.spare, [])
        return answer, ("finisher" if answer is not None else None), None, text

    def _interrupted_early(self, prompt_s: float) -> Result:
        """The result (and the trace's end) of a run stopped during its prefill: no worker wrote anything."""
        result = Result(answer=None, reason="interrupted", texts={w.name: "" for w in self.workers},
                        transcript=self.model.detokenize(self.prompt.tokens), prompt_tokens=len(self.prompt.tokens),
                        prompt_s=prompt_s, generated={w.name: 0 for w in self.workers}, steps=0,
                        decode_s=self.decode_s, finished_steps={w.name: 0 for w in self.workers})
        if self.trace:
            self.trace.end(self.cache.blocks.values(), result.reason, None)
        return result

    def _worker_text(self, w: Worker) -> str:
        """Its steps, with the token it sampled last (not decoded yet when the run stopped)."""
        owned = [b for b in self.cache.blocks.values() if b.kind == "step" and b.owner == w.name]
        last = w.pending if w.sampled else []
        return "".join(self.model.detokenize(b.tokens) for b in owned) + self.model.detokenize(last)

    def _trace_header(self) -> None:
        if self.trace:
            s = self.s
            self.trace.header(model=str(self.model.path), n_ctx=self.ctx.n_ctx, workers=self.names, layout=s.layout,
                              seed=s.seed, sampling={"temp": s.temp, "top_k": s.top_k, "top_p": s.top_p,
                                                     "min_p": s.min_p},
                              suppressed=self.banned, flash_attn=self.ctx.flash_attn,
                              cache_types=[s.cache_type_k, s.cache_type_v],
                              protocol=self.protocol.to_dict(), instructions_in=self.instructions_in,
                              check_every=self.check_every, finisher_tokens=self.finisher_tokens,
                              thinking=None if self.thinking is None else
                              {"open": self.thinking.open, "close": self.thinking.close})

    def close(self) -> None:
        if self.trace is not None:
            self.trace.discard()  # if the run did not reach its end
        for w in self.workers:
            w.sampler.close()
        self.ctx.close()


def _collect(gen, out: list):
    """Run a generator of events, keeping its events in `out`; returns what it returns."""
    while True:
        try:
            out.append(next(gen))
        except StopIteration as stop:
            return stop.value


def _id(block: Block | None) -> int | None:
    return None if block is None else block.id
