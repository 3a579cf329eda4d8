"""The step loop: one batched llama_decode per step for all workers over one shared KV cache.

The engine prints nothing: `Engine.stream` yields events (tokens, finished steps, progress, done);
the CLI and the Python API consume them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import protocol as P
from .cache import SharedCache
from .native import CACHE_TYPES, FLASH_ATTN, Context, ContextConfig, ContextFull, Model, Sampler
from .trace import TraceWriter


@dataclass
class Settings:
    workers: int = 2
    layout: str = "combined"
    names: list[str] | None = None
    max_steps: int = 512            # budget, in parallel decode steps
    n_ctx: int = 0                  # 0: from the model, capped to 8192
    n_gpu_layers: int = 0
    threads: int = 0
    seed: int = 0
    temp: float = 0.6
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    check_every: int = 1024         # redundancy check every N generated tokens (0: never)
    stop_on_eos: bool = False
    finisher_tokens: int = 16
    n_batch: int = 512
    cache_type_k: str = "f16"       # KV cache types: f32, f16, q8_0, q4_0 (a quantized V needs flash attention)
    cache_type_v: str = "f16"
    flash_attn: str = "auto"        # on | off | auto (on where the backend supports it, as llama.cpp)


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


def _logprob(logits: np.ndarray, token: int) -> float:
    m = float(logits.max())
    return float(logits[token] - m - math.log(float(np.exp(logits - m).sum())))


class Engine:
    def __init__(self, model: Model, settings: Settings, trace_path=None):
        s = settings
        if s.layout not in P.LAYOUTS:
            raise ValueError(f"unknown layout {s.layout!r}; choose from {', '.join(P.LAYOUTS)}")
        self.model, self.s = model, s
        self.names = s.names or P.default_names(s.workers)
        if len(self.names) != s.workers:
            raise ValueError(f"{len(self.names)} names for {s.workers} workers")
        n_ctx = s.n_ctx or min(model.n_ctx_train, 8192)
        for name, t in (("K", s.cache_type_k), ("V", s.cache_type_v)):
            if t not in CACHE_TYPES:
                raise ValueError(f"unknown {name} cache type {t!r}; choose from {', '.join(CACHE_TYPES)}")
        if s.flash_attn not in FLASH_ATTN:
            raise ValueError(f"unknown flash attention setting {s.flash_attn!r}; choose from {', '.join(FLASH_ATTN)}")
        if s.cache_type_v not in ("f32", "f16") and s.flash_attn == "off":
            raise ValueError(f"a quantized V cache ({s.cache_type_v}) needs flash attention (-fa on or auto)")
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
        self.samplers = [Sampler(model.n_vocab, s.temp, s.top_k, s.top_p, s.min_p, s.seed + w, self.banned)
                         for w in range(s.workers)]
        self.stop_requested = False

    # --- setup ----------------------------------------------------------------

    def _write(self, seq: int, view: list[int], text_or_tokens) -> None:
        toks = self.model.tokenize(text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens
        self.cache.set_view(seq, view)
        self.cache.decode({seq: toks})

    def _setup(self, problem: str) -> Iterator[Progress]:
        c, W = self.cache, self.s.workers
        text = P.chat_prompt(self.model, self.names, self.s.layout, problem)
        toks = self.model.tokenize(text, add_special=True)
        need = len(toks) + 64 * W  # room for the headers and a first step of every worker
        if need > self.ctx.n_ctx:
            raise ValueError(f"the prompt ({len(toks)} tokens) and {W} workers do not fit the context "
                             f"({self.ctx.n_ctx} tokens): use -c {need} or more")
        self.prompt = c.new_block("prompt")
        view = [self.prompt.id]
        for i in range(0, len(toks), self.s.n_batch):  # chunked prefill, with progress
            self._write(0, view, toks[i:i + self.s.n_batch])
            yield Progress(min(i + self.s.n_batch, len(toks)), len(toks))
        self.others_hdr = c.new_block("separator")
        if self.s.layout == "combined":
            self._write(0, [self.prompt.id, self.others_hdr.id], P.OTHERS_HEADER)
        self.history: list[int] = []
        self.step_no = [0] * W
        self.current = [None] * W
        # combined layout: each unfinished step comes after a separator block of its own, written
        # with the step's first tokens (adjacent cells, one delta in every view: no extra group)
        self.separator: list = [None] * W
        self.pending: list[list[int]] = [[] for _ in range(W)]
        self.pending_sep: list[list[int]] = [[] for _ in range(W)]
        self.step_text = [""] * W
        self.finishing = [False] * W
        self.check_next = 0
        for w in range(W):
            self._new_step(w, check=False)

    def _new_step(self, w: int, check: bool) -> None:
        self.step_no[w] += 1
        if self.s.layout == "combined":
            self.separator[w] = self.cache.new_block("separator", owner=self.names[w])
            self.pending_sep[w] = self.model.tokenize(P.STEP_SEPARATOR)
        self.current[w] = self.cache.new_block("step", owner=self.names[w])
        prefix = P.step_prefix(self.names[w], self.step_no[w]) + (P.REDUNDANCY_CHECK if check else "")
        self.pending[w] = self.model.tokenize(prefix)  # the previous step ended with a blank line
        self.step_text[w] = ""

    def _view(self, w: int) -> list[int]:
        others = [v for v in range(self.s.workers) if v != w]
        cur = [self.current[v].id for v in others]
        if self.s.layout == "contiguous":
            return [self.prompt.id, *self.history, *cur, self.current[w].id]
        if self.s.layout == "stepwise":
            return [self.prompt.id, *self.history, self.current[w].id]
        wip = [b for v in [*others, w] for b in (self.separator[v].id, self.current[v].id)]
        return [self.prompt.id, *self.history, self.others_hdr.id, *wip]

    # --- the loop -------------------------------------------------------------

    def stream(self, problem: str) -> Iterator:
        W, t0 = self.s.workers, time.perf_counter()
        self._trace_header()
        yield from self._setup(problem)
        prompt_tokens, prompt_s = len(self.prompt.tokens), time.perf_counter() - t0
        generated, reason, answer, t1, step = [0] * W, "budget", None, time.perf_counter(), 0
        for step in range(self.s.max_steps):
            if self.stop_requested:
                reason = "interrupted"
                break
            appends = {w: self.pending[w] for w in range(W) if self.pending[w]}
            heads = {w: self.pending_sep[w] for w in appends if self.pending_sep[w]}
            n_new = sum(map(len, appends.values())) + sum(map(len, heads.values()))
            if self.cache.used_cells() + n_new + 2 * W >= self.ctx.n_ctx:
                reason = "ctx_full"
                break
            for w in range(W):
                self.cache.set_view(w, self._view(w))
            try:
                logits = self.cache.decode(appends, heads=heads)
            except ContextFull:  # no room for the step's tokens or the copies attention needs
                reason = "ctx_full"
                break
            # the view each token was sampled from: with what was just decoded, the others' tokens included
            views = {w: self.cache.view_prefixes(w) for w in appends} if self.trace else {}
            for w in sorted(appends):
                self.pending[w] = []
                self.pending_sep[w] = []
                if self.finishing[w]:  # its last token is in: the step joins the history
                    yield from self._commit(w)
                    answer = P.extract_boxed(self.step_text_done) or answer
                    continue
                tok = self.samplers[w].sample(logits[w])
                generated[w] += 1
                self._trace_token(step, self.names[w], views.get(w), tok, logits[w])
                if self.model.is_eog(tok) and self.s.stop_on_eos:
                    reason = "eos"
                piece = self.model.piece(tok).decode("utf-8", errors="replace")
                self.pending[w] = [tok]
                self.step_text[w] += piece
                self.finishing[w] = P.step_finished(self.step_text[w])
                yield TokenEvent(self.names[w], tok, piece)
            if answer is not None:
                reason = "answer"
                break
            if reason == "eos":
                break
        gen_s = time.perf_counter() - t1
        finisher = ""
        if reason in ("budget", "ctx_full") and answer is None:
            finisher, answer = self._finish()
        result = Result(answer=answer, reason=reason,
                        texts={n: self._worker_text(w) for w, n in enumerate(self.names)},
                        transcript=self.model.detokenize(self.cache.materialize(0)),
                        prompt_tokens=prompt_tokens, prompt_s=prompt_s,
                        generated=dict(zip(self.names, generated)), generate_s=gen_s, steps=step + 1,
                        finisher=finisher)
        self._trace_end(result)
        yield DoneEvent(result)

    def _commit(self, w: int):
        block = self.current[w]
        self.step_text_done = self.step_text[w]
        self.history.append(block.id)
        self.finishing[w] = False
        yield StepEvent(self.names[w], self.step_no[w], self.model.detokenize(block.tokens))
        check = False
        if self.s.check_every and sum(len(self.cache.blocks[b].tokens) for b in self.history) >= \
                self.s.check_every * (self.check_next + 1):
            check, self.check_next = True, self.check_next + 1
        self._new_step(w, check)

    def _finish(self) -> tuple[str, str | None]:
        """At the budget: a few greedy tokens after the whole transcript, as worker 0 sees it."""
        block = self.cache.new_block("finisher")
        view = self._view(0) + [block.id]
        self.cache.set_view(0, view)
        greedy = Sampler(self.model.n_vocab, 0.0, banned=self.banned)
        toks, text = self.model.tokenize(P.FINISHER), ""
        for _ in range(self.s.finisher_tokens):
            if self.cache.used_cells() + len(toks) >= self.ctx.n_ctx:
                break
            try:
                logits = self.cache.decode({0: toks})[0]
            except ContextFull:
                break
            prefixes = self.cache.view_prefixes(0)
            tok = greedy.sample(logits)
            self._trace_token(None, None, prefixes, tok, logits)
            text += self.model.piece(tok).decode("utf-8", errors="replace")
            toks = [tok]
            if "}" in text:
                break
        greedy.close()
        return text, P.extract_boxed("\\boxed{" + text)

    def _worker_text(self, w: int) -> str:
        owned = [b for b in self.cache.blocks.values() if b.kind == "step" and b.owner == self.names[w]]
        return "".join(self.model.detokenize(b.tokens) for b in owned)

    # --- trace ----------------------------------------------------------------

    def _trace_header(self) -> None:
        if self.trace:
            s = self.s
            self.trace.write({"type": "header", "version": 1, "model": str(self.model.path),
                              "n_ctx": self.ctx.n_ctx, "workers": self.names, "layout": s.layout,
                              "seed": s.seed, "sampling": {"temp": s.temp, "top_k": s.top_k, "top_p": s.top_p,
                                                           "min_p": s.min_p},
                              "flash_attn": self.ctx.flash_attn, "cache_types": [s.cache_type_k, s.cache_type_v],
                              "suppressed": self.banned})

    def _trace_token(self, step, worker, view, token, logits: np.ndarray) -> None:
        if self.trace:  # the log-probability costs a pass over the vocabulary: only for the trace
            self.trace.write({"type": "token", "step": step, "worker": worker, "view": [[b, n] for b, n in view],
                              "token": token, "logprob": _logprob(logits, token)})

    def _trace_end(self, result: Result) -> None:
        if self.trace:
            for b in self.cache.blocks.values():
                if b.tokens:
                    self.trace.write({"type": "block", "id": b.id, "kind": b.kind, "owner": b.owner,
                                      "tokens": b.tokens})
            self.trace.write({"type": "end", "reason": result.reason, "answer": result.answer})
            self.trace.close()

    def close(self) -> None:
        if self.trace is not None:
            self.trace.discard()  # if the run did not reach its end
        for smp in self.samplers:
            smp.close()
        self.ctx.close()
