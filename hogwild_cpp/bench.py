"""Decode-step timings: hogwild views against plain llama.cpp, in one process and one run.

For W workers at context length L (tokens in each worker's view):
  hogwild   one step of W workers over the engine's combined layout (prompt, history, a header,
            each worker's current step after its separator, the viewer's own last)
  batched   one step of W sequences of length L with stock llama.cpp (prefix shared by seq_cp)
  single    one step of one sequence of length L
  reprefill re-encoding every worker's view from scratch: W prefills of L tokens

Hogwild views need flash attention off (patches/README.md); the three baselines run with it off,
on, or both (`flash`), each setting a row of its own.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass

from .cache import SharedCache
from .native import Context, ContextConfig, Model

STEP_LEN = 32  # tokens in each worker's current step, and in each finished step of the history


@dataclass
class Row:
    device: str
    model: str
    workers: int
    ctx: int
    baseline_flash_attn: bool
    hogwild_step_ms: float
    batched_step_ms: float
    single_step_ms: float
    reprefill_step_ms: float
    overhead_ratio: float
    speedup_vs_single: float
    kv_cells: int
    unique_tokens: int


def _median_ms(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _tokens(rng: random.Random, n: int, n_vocab: int) -> list[int]:
    return [rng.randrange(3, n_vocab) for _ in range(n)]


def _config(model: Model, n_ctx: int, n_seq: int, threads: int, flash_attn: bool = False,
            hogwild: bool = True) -> ContextConfig:
    return ContextConfig(n_ctx=n_ctx, n_batch=512, n_seq_max=n_seq, n_threads=threads,
                         flash_attn=flash_attn, hogwild=hogwild)


def hogwild_step(model: Model, workers: int, ctx_len: int, steps: int, threads: int, rng) -> tuple[float, int, int]:
    n_ctx = ctx_len + (workers + 1) * (steps + 8) + 64
    ctx = Context(model, _config(model, n_ctx, workers, threads))
    cache = SharedCache(ctx, workers)
    own = max(1, min(STEP_LEN, ctx_len // (4 * workers)))
    shared = ctx_len - workers * (own + 1) - 12  # the header and the separators count too
    prompt_len = max(1, shared // 4)
    prompt = cache.new_block("prompt")
    history = []
    cache.set_view(0, [prompt.id])
    cache.decode({0: _tokens(rng, prompt_len, model.n_vocab)})
    left = shared - prompt_len
    while left > 0:  # finished steps, written one after another
        n = min(STEP_LEN, left)
        b = cache.new_block("step")
        history.append(b.id)
        cache.set_view(0, [prompt.id, *history])
        cache.decode({0: _tokens(rng, n, model.n_vocab)})
        left -= n
    # the engine's combined layout: a header, then each worker's unfinished step after a separator
    # block of its own (written with the step's first tokens), the viewer's own step last
    header = cache.new_block("separator")
    cache.set_view(0, [prompt.id, *history, header.id])
    cache.decode({0: _tokens(rng, 12, model.n_vocab)})
    sep = [cache.new_block("separator") for _ in range(workers)]
    current = [cache.new_block("step") for _ in range(workers)]
    for w in range(workers):
        cache.set_view(w, [prompt.id, *history, header.id, sep[w].id, current[w].id])
    cache.decode({w: _tokens(rng, own, model.n_vocab) for w in range(workers)},
                 heads={w: _tokens(rng, 1, model.n_vocab) for w in range(workers)})
    for w in range(workers):
        wip = [b for v in [*range(w), *range(w + 1, workers), w] for b in (sep[v].id, current[v].id)]
        cache.set_view(w, [prompt.id, *history, header.id, *wip])

    def step():
        cache.decode({w: [rng.randrange(3, model.n_vocab)] for w in range(workers)})

    ms = _median_ms(step, steps)
    cells, unique = cache.used_cells(), cache.unique_tokens()
    ctx.close()
    return ms, cells, unique


def batched_step(model: Model, workers: int, ctx_len: int, steps: int, threads: int, rng,
                 flash_attn: bool = False) -> float:
    ctx = Context(model, _config(model, ctx_len + workers * (steps + 8) + 64, workers, threads,
                                 flash_attn=flash_attn, hogwild=False))
    ctx.clear()
    ctx.decode([(t, i, 0, False) for i, t in enumerate(_tokens(rng, ctx_len, model.n_vocab))])
    import llama_cpp.llama_cpp as ll
    for w in range(1, workers):
        ll.llama_memory_seq_cp(ctx.memory, 0, w, -1, -1)
    pos = [ctx_len] * workers

    def step():
        ctx.decode([(rng.randrange(3, model.n_vocab), pos[w], w, True) for w in range(workers)])
        for w in range(workers):
            pos[w] += 1

    ms = _median_ms(step, steps)
    ctx.close()
    return ms


def prefill_ms(model: Model, ctx_len: int, threads: int, rng, repeats: int = 2, flash_attn: bool = False) -> float:
    ctx = Context(model, _config(model, ctx_len + 64, 1, threads, flash_attn=flash_attn, hogwild=False))
    toks = _tokens(rng, ctx_len, model.n_vocab)

    def once():
        ctx.clear()
        ctx.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])

    ms = _median_ms(once, repeats, warmup=1)
    ctx.close()
    return ms


FLASH = {"off": (False,), "on": (True,), "both": (False, True)}


def run(model_path: str, workers: list[int], ctxs: list[int], steps: int = 20, n_gpu_layers: int = 0,
        threads: int = 0, device: str = "cpu", flash: str = "off", progress=lambda msg: None) -> list[Row]:
    model = Model(model_path, n_gpu_layers=n_gpu_layers)
    rng = random.Random(0)
    rows = []
    name = str(model_path).rsplit("/", 1)[-1]
    for ctx_len in ctxs:
        single, prefill = {}, {}
        for fa in FLASH[flash]:
            progress(f"ctx {ctx_len}: single sequence and re-prefill" + (", flash attention" if fa else ""))
            single[fa] = batched_step(model, 1, ctx_len, steps, threads, rng, flash_attn=fa)
            prefill[fa] = prefill_ms(model, ctx_len, threads, rng, flash_attn=fa)
        for w in workers:
            progress(f"ctx {ctx_len}: {w} workers, hogwild")
            hw, cells, unique = hogwild_step(model, w, ctx_len, steps, threads, rng)
            for fa in FLASH[flash]:
                progress(f"ctx {ctx_len}: {w} workers, batched" + (", flash attention" if fa else ""))
                batched = batched_step(model, w, ctx_len, steps, threads, rng, flash_attn=fa)
                rows.append(Row(device=device, model=name, workers=w, ctx=ctx_len, baseline_flash_attn=fa,
                                hogwild_step_ms=round(hw, 4), batched_step_ms=round(batched, 4),
                                single_step_ms=round(single[fa], 4), reprefill_step_ms=round(w * prefill[fa], 4),
                                overhead_ratio=round(hw / batched, 3),
                                speedup_vs_single=round(w * single[fa] / hw, 3),
                                kv_cells=cells, unique_tokens=unique))
    model.close()
    return rows


def markdown(rows: list[Row]) -> str:
    keys = list(asdict(rows[0]).keys()) if rows else []
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(v) for v in asdict(r).values()) + " |" for r in rows]
    return "\n".join(out)
