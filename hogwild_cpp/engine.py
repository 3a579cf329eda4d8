"""The step loop: one batched llama_decode per step for all workers over one shared KV cache.

The engine prints nothing: `Engine.stream` yields events (tokens, finished steps, progress, done);
the CLI and the Python API consume them. A run goes: `_prefill` (the prompt, once), then per step
`_decode_step` (every worker's pending tokens in one decode) and `_advance` (each worker samples,
or its finished step joins the history), then `_finish` at the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import protocol as P
from .cache import Block, SharedCache
from .errors import BadInput
from .layouts import LAYOUTS
from .native import Context, ContextConfig, ContextFull, Model, Sampler
from .settings import Settings
from .trace import TraceWriter

__all__ = ["Engine", "Settings", "Progress", "TokenEvent", "StepEvent", "DoneEvent", "Result"]


@dataclass
class Progress:
    done: int
    total: int


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
class Result:
    answer: str | None
    reason: str                     # answer | budget | eos | ctx_full | interrupted
    texts: dict[str, str]           # each worker's steps, in order
    transcript: str                 # the shared history, as the last view saw it
    prompt_tokens: int = 0
    prompt_s: float = 0.0
    generated: dict[str, int] = field(default_factory=dict)
    generate_s: float = 0.0
    steps: int = 0
    finisher: str = ""


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
    separator: Block | None = None          # the blank line before it (layouts with separators)
    pending: list[int] = field(default_factory=list)      # tokens for the next decode
    pending_sep: list[int] = field(default_factory=list)  # separator tokens, written with them
    text: str = ""                          # the current step's text so far
    finishing: bool = False                 # its last token is sampled: the step joins the history once decoded
    generated: int = 0


class Engine:
    def __init__(self, model: Model, settings: Settings, trace_path=None):
        settings.check()
        s = settings
        self.model, self.s, self.layout = model, s, LAYOUTS[s.layout]
        names = s.names or P.default_names(s.workers)
        n_ctx = s.n_ctx or min(model.n_ctx_train, 8192)
        self.trace = TraceWriter(trace_path) if trace_path else None  # first: an unwritable path costs nothing
        try:
            self.ctx = Context(model, ContextConfig(n_ctx=n_ctx, n_batch=s.n_batch, n_seq_max=s.workers,
                                                    n_threads=s.threads, type_k=s.cache_type_k,
                                                    type_v=s.cache_type_v, flash_attn=s.flash_attn))
        except BaseException:
            if self.trace is not None:
                self.trace.discard()
            raise
        self.cache = SharedCache(self.ctx, s.workers)
        special = model.special_tokens()
        banned = {t for k, t in special.items() if k != "eos" or not s.stop_on_eos}
        think_end = model.tokenize("</think>", parse_special=True)
        if len(think_end) == 1:  # a model with a reasoning-end token must not close its reasoning
            banned.add(think_end[0])
        self.banned = sorted(banned)
        self.workers = [Worker(w, name, Sampler(model.n_vocab, s.temp, s.top_k, s.top_p, s.min_p, s.seed + w,
                                                self.banned))
                        for w, name in enumerate(names)]
        self.names = names
        self.stop_requested = False
        self.prompt: Block | None = None
        self.header: Block | None = None
        self.history: list[int] = []
        self.checks_done = 0

    # --- the loop -------------------------------------------------------------

    def stream(self, problem: str) -> Iterator:
        t0 = time.perf_counter()
        self._trace_header()
        yield from self._prefill(problem)
        prompt_s = time.perf_counter() - t0
        reason, answer, step, t1 = "budget", None, 0, time.perf_counter()
        for step in range(self.s.max_steps):
            if self.stop_requested:
                reason = "interrupted"
                break
            decoded = self._decode_step()
            if decoded is None:  # no room for the step's tokens or the copies attention needs
                reason = "ctx_full"
                break
            logits, writers = decoded
            for w in writers:
                finished = yield from self._advance(w, step, logits[w.index])
                if finished is not None:
                    answer = P.extract_boxed(finished) or answer
                elif self.model.is_eog(w.pending[0]) and self.s.stop_on_eos:
                    reason = "eos"
            if answer is not None:
                reason = "answer"
                break
            if reason == "eos":
                break
        generate_s = time.perf_counter() - t1
        finisher = ""
        if reason in ("budget", "ctx_full") and answer is None:
            finisher, answer = self._finish()
        result = Result(answer=answer, reason=reason, texts={w.name: self._worker_text(w) for w in self.workers},
                        transcript=self.model.detokenize(self.cache.materialize(0)),
                        prompt_tokens=len(self.prompt.tokens), prompt_s=prompt_s,
                        generated={w.name: w.generated for w in self.workers}, generate_s=generate_s,
                        steps=step + 1, finisher=finisher)
        if self.trace:
            self.trace.end(self.cache.blocks.values(), result.reason, result.answer)
        yield DoneEvent(result)

    def _prefill(self, problem: str) -> Iterator[Progress]:
        """The prompt (in chunks, with progress), the layout's header, and every worker's first step."""
        c, W = self.cache, self.s.workers
        toks = self.model.tokenize(P.chat_prompt(self.model, self.names, self.layout, problem), add_special=True)
        need = len(toks) + 64 * W  # room for the header and a first step of every worker
        if need > self.ctx.n_ctx:
            raise BadInput(f"the prompt ({len(toks)} tokens) and {W} workers do not fit the context "
                           f"({self.ctx.n_ctx} tokens): use -c {need} or more")
        self.prompt = c.new_block("prompt")
        c.set_view(0, [self.prompt.id])
        for i in range(0, len(toks), self.s.n_batch):
            c.decode({0: toks[i:i + self.s.n_batch]})
            yield Progress(min(i + self.s.n_batch, len(toks)), len(toks))
        if self.layout.header:
            self.header = c.new_block("separator")
            c.set_view(0, [self.prompt.id, self.header.id])
            c.decode({0: self.model.tokenize(P.OTHERS_HEADER)})
        for w in self.workers:
            self._new_step(w, check=False)

    def _new_step(self, w: Worker, check: bool) -> None:
        w.step_no += 1
        if self.layout.separators:  # written with the step's first tokens, so that it moves with the step
            w.separator = self.cache.new_block("separator", owner=w.name)
            w.pending_sep = self.model.tokenize(P.STEP_SEPARATOR)
        w.step = self.cache.new_block("step", owner=w.name)
        prefix = P.step_prefix(w.name, w.step_no) + (P.REDUNDANCY_CHECK if check else "")
        w.pending = self.model.tokenize(prefix)  # the previous step ended with a blank line
        w.text = ""

    def _view(self, w: Worker) -> list[int]:
        return self.layout.view(w, self.workers, self.prompt.id, self.history,
                                self.header.id if self.header else None)

    def _decode_step(self) -> tuple[dict[int, np.ndarray], list[Worker]] | None:
        """Every worker's pending tokens in one decode (each sees the others' tokens of this step);
        None if the cache has no room for them."""
        writers = [w for w in self.workers if w.pending]
        appends = {w.index: w.pending for w in writers}
        heads = {w.index: w.pending_sep for w in writers if w.pending_sep}
        n_new = sum(map(len, appends.values())) + sum(map(len, heads.values()))
        if self.cache.used_cells() + n_new + 2 * len(self.workers) >= self.ctx.n_ctx:
            return None
        for w in self.workers:
            self.cache.set_view(w.index, self._view(w))
        try:
            logits = self.cache.decode(appends, heads=heads)
        except ContextFull:
            return None
        for w in writers:
            w.pending_sep = []
        return logits, writers

    def _advance(self, w: Worker, step: int, logits: np.ndarray):
        """After a decode: a finishing worker's step joins the history (returns its text), the others
        sample their next token. Yields the events."""
        w.pending = []
        if w.finishing:
            return (yield from self._commit(w))
        tok = w.sampler.sample(logits)
        w.generated += 1
        if self.trace:  # the view it was sampled from: what was just decoded, the others' tokens included
            self.trace.token(step, w.name, self.cache.view_prefixes(w.index), tok, logits)
        piece = self.model.piece(tok).decode("utf-8", errors="replace")
        w.pending = [tok]
        w.text += piece
        w.finishing = P.step_finished(w.text)
        yield TokenEvent(w.name, tok, piece)
        return None

    def _commit(self, w: Worker):
        """w's finished step joins the shared history; w starts its next step. Returns the step's text."""
        text = w.text
        self.history.append(w.step.id)
        w.finishing = False
        yield StepEvent(w.name, w.step_no, self.model.detokenize(w.step.tokens))
        history_tokens = sum(len(self.cache.blocks[b].tokens) for b in self.history)
        check = bool(self.s.check_every) and history_tokens >= self.s.check_every * (self.checks_done + 1)
        self.checks_done += check
        self._new_step(w, check)
        return text

    def _finish(self) -> tuple[str, str | None]:
        """At the budget: a few greedy tokens after the whole transcript, as the first worker sees it."""
        block = self.cache.new_block("finisher")
        self.cache.set_view(0, self._view(self.workers[0]) + [block.id])
        greedy = Sampler(self.model.n_vocab, 0.0, banned=self.banned)
        toks, text = self.model.tokenize(P.FINISHER), ""
        for _ in range(self.s.finisher_tokens):
            if self.cache.used_cells() + len(toks) >= self.ctx.n_ctx:
                break
            try:
                logits = self.cache.decode({0: toks})[0]
            except ContextFull:
                break
            tok = greedy.sample(logits)
            if self.trace:
                self.trace.token(None, None, self.cache.view_prefixes(0), tok, logits)
            text += self.model.piece(tok).decode("utf-8", errors="replace")
            toks = [tok]
            if "}" in text:
                break
        greedy.close()
        return text, P.extract_boxed("\\boxed{" + text)

    def _worker_text(self, w: Worker) -> str:
        owned = [b for b in self.cache.blocks.values() if b.kind == "step" and b.owner == w.name]
        return "".join(self.model.detokenize(b.tokens) for b in owned)

    def _trace_header(self) -> None:
        if self.trace:
            s = self.s
            self.trace.header(model=str(self.model.path), n_ctx=self.ctx.n_ctx, workers=self.names, layout=s.layout,
                              seed=s.seed, sampling={"temp": s.temp, "top_k": s.top_k, "top_p": s.top_p,
                                                     "min_p": s.min_p},
                              suppressed=self.banned, flash_attn=self.ctx.flash_attn,
                              cache_types=[s.cache_type_k, s.cache_type_v])

    def close(self) -> None:
        if self.trace is not None:
            self.trace.discard()  # if the run did not reach its end
        for w in self.workers:
            w.sampler.close()
        self.ctx.close()
