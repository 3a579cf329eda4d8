"""Decode-step timings: hogwild views against plain llama.cpp, in one process and one run.

For W workers at context length L (tokens in each worker's view):
  hogwild   one step of W workers over the engine's combined layout (prompt, history header, history,
            others header, each other worker's current step and its marker, own header, own step)
  batched   one step of W sequences of length L with stock llama.cpp (prefix shared by seq_cp),
            timed in turn with the hogwild step, in the same process, so a noisy machine's drift
            hits both alike
  single    one step of one sequence of length L
  reprefill re-encoding every worker's view from scratch: W prefills of L tokens

All four run with the same flash-attention setting and KV cache types; `flash` = off, on or both
(a row per setting). On a CUDA build with PyTorch installed, `kernels` also counts the GPU kernels
of one hogwild and one batched step (CUPTI, through torch.profiler, in this process).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass

from .cache import SharedCache
from .layouts import COMBINED, Layout
from .native import Context, ContextConfig, Model, gpu_offload_supported

STEP_LEN = 32  # tokens in each worker's current step, and in each finished step of the history


@dataclass
class Row:
    device: str
    model: str
    workers: int
    ctx: int
    flash_attn: bool
    hogwild_step_ms: float
    batched_step_ms: float
    single_step_ms: float
    reprefill_step_ms: float
    overhead_ratio: float
    speedup_vs_single: float
    kv_cells: int
    unique_tokens: int
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    hogwild_kernels: float | None = None   # GPU kernels per step (CUDA, with kernels=True)
    batched_kernels: float | None = None
    hogwild_gpu_ms: float | None = None    # GPU time per step, summed over those kernels
    batched_gpu_ms: float | None = None
    shadows: int | None = None             # per-view copies the last hogwild step wrote (patches/README.md)


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


def _config(n_ctx: int, n_seq: int, threads: int, flash_attn: str = "off",
            hogwild: bool = True, cache=("f16", "f16")) -> ContextConfig:
    return ContextConfig(n_ctx=n_ctx, n_batch=512, n_seq_max=n_seq, n_threads=threads,
                         flash_attn=flash_attn, hogwild=hogwild, type_k=cache[0], type_v=cache[1])


def kernel_profile(fn, steps: int = 5) -> dict | None:
    """GPU kernels one call of fn runs, and their GPU time, by CUPTI through torch.profiler (None
    without PyTorch or CUDA). Every kernel of this process is counted, llama.cpp's included."""
    try:
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    if not torch.cuda.is_available() or not gpu_offload_supported():
        return None
    fn()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    by_name: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset")):
            by_name.setdefault(e.name, []).append(e.device_time_total / 1e3)
    kernels = sum(len(v) for v in by_name.values()) / steps
    gpu_ms = sum(sum(v) for v in by_name.values()) / steps
    top = sorted(((sum(v) / steps, len(v) / steps, k) for k, v in by_name.items()), reverse=True)
    return {"kernels": kernels, "gpu_ms": gpu_ms,
            "top": [{"name": k[:120], "ms": round(ms, 4), "count": n} for ms, n, k in top[:40]]}


@dataclass
class _StepBlocks:
    """A bench worker: what a Layout reads of a worker (its unfinished step, marker, own header)."""
    step: object
    marker: object = None
    own_header: object = None


def _layout_lengths(model: Model) -> dict[str, int]:
    """Tokens of the default protocol's layout texts: the bench's headers and markers are that long."""
    from .protocol import default

    p = default()
    return {k: len(model.tokenize(p[f"layout.{k}"])) for k in ("history_header", "others_header", "marker",
                                                                "own_header")}


def hogwild_setup(model: Model, workers: int, ctx_len: int, steps: int, threads: int, rng, flash_attn: str = "off",
                  cache=("f16", "f16"), layout: Layout = COMBINED):
    """ctx_len tokens a view in the engine's layout (its own Layout object), blocks placed as the engine
    places them: a prompt, the history header, a history of STEP_LEN-token finished steps, the others
    header, every worker's unfinished step, each other worker's marker, the own header; markers and
    own headers written through a keeper sequence (engine.py); returns (one decode step of every
    worker, the SharedCache)."""
    # the protocol's lengths (a byte-level test vocabulary: capped, so that tiny contexts still fit)
    L = {k: min(n, max(1, ctx_len // 16)) for k, n in _layout_lengths(model).items()}
    # room after the used cells for the per-view copies of the steps being written (patches/README.md)
    n_ctx = ctx_len + (workers + 1) * (steps + 8) + 64 + 4 * workers * workers * (STEP_LEN + steps + 32) + 512
    ctx = Context(model, _config(n_ctx, workers + 1, threads, flash_attn, cache=cache))
    keeper = workers
    c = SharedCache(ctx, workers + 1)
    own = max(1, min(STEP_LEN, ctx_len // (4 * workers)))
    # a view holds the shared blocks, its headers, the others' markers and steps (if it shows them), its own step
    per_view = (own + L["marker"]) * (workers - 1) + own if layout.shows_others else own
    per_view += L["history_header"] * layout.history + L["others_header"] * layout.header
    per_view += L["own_header"] * layout.own_header
    shared = max(2, ctx_len - per_view)
    prompt_len = max(1, shared // 4)
    prompt = c.new_block("prompt")
    kept = [prompt.id]
    c.set_view(keeper, kept)
    c.decode({keeper: _tokens(rng, prompt_len, model.n_vocab)})

    def write(seq, view, kind, n):
        b = c.new_block(kind)
        c.set_view(seq, [*view, b.id])
        c.decode({seq: _tokens(rng, n, model.n_vocab)})
        view.append(b.id)
        return b

    hh = write(keeper, kept, "history-header", L["history_header"]) if layout.history else None
    history = []
    left = shared - prompt_len
    while layout.history and left > 0:  # finished steps, written one after another
        b = write(0, [i for i in (prompt.id, hh.id, *history)], "step", min(STEP_LEN, left))
        history.append(b.id)
        left -= STEP_LEN
    before = [prompt.id, hh.id, *history] if layout.history else [prompt.id]
    oh = write(0, list(before), "others-header", L["others_header"]) if layout.header else None
    ws = [_StepBlocks(c.new_block("step")) for _ in range(workers)]
    if workers > 1:
        for w in ws:
            w.marker = write(keeper, kept, "marker", L["marker"]) if layout.markers else None
            w.own_header = write(keeper, kept, "own-header", L["own_header"]) if layout.own_header else None
    elif layout.own_header:
        ws[0].own_header = write(0, [*before, *([oh.id] if oh else [])], "own-header", L["own_header"])
    ids = dict(header=oh.id if oh else None, history_header=hh.id if hh else None)
    for w, blocks in enumerate(ws):
        c.set_view(w, layout.view(blocks, ws, prompt.id, history, **ids))
    # every worker's first tokens in one decode
    c.decode({w: _tokens(rng, own, model.n_vocab) for w in range(workers)})

    def step():
        c.decode({w: [rng.randrange(3, model.n_vocab)] for w in range(workers)})

    return step, c


def batched_setup(model: Model, workers: int, ctx_len: int, steps: int, threads: int, rng,
                  flash_attn: str = "off", cache=("f16", "f16")):
    """Plain llama.cpp: W sequences of ctx_len tokens (prefix shared by seq_cp); returns (one step, Context)."""
    ctx = Context(model, _config(ctx_len + workers * (steps + 16) + 64, workers, threads,
                                 flash_attn=flash_attn, hogwild=False, cache=cache))
    ctx.clear()
    ctx.decode([(t, i, 0, False) for i, t in enumerate(_tokens(rng, ctx_len, model.n_vocab))])
    for w in range(1, workers):
        ctx.seq_cp(0, w)
    pos = [ctx_len] * workers

    def step():
        ctx.decode([(rng.randrange(3, model.n_vocab), pos[w], w, True) for w in range(workers)])
        for w in range(workers):
            pos[w] += 1

    return step, ctx


def _paired_median_ms(fn_a, fn_b, steps: int, warmup: int = 3) -> tuple[float, float]:
    """Median ms of each of two steps, timed alternately: drift of a shared machine hits both alike."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(steps):
        for fn, times in ((fn_a, ta), (fn_b, tb)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ta), statistics.median(tb)


def batched_step(model: Model, workers: int, ctx_len: int, steps: int, threads: int, rng,
                 flash_attn: str = "off", cache=("f16", "f16")) -> float:
    step, ctx = batched_setup(model, workers, ctx_len, steps, threads, rng, flash_attn, cache)
    ms = _median_ms(step, steps)
    ctx.close()
    return ms


def prefill_ms(model: Model, ctx_len: int, threads: int, rng, repeats: int = 2, flash_attn: str = "off",
               cache=("f16", "f16")) -> float:
    ctx = Context(model, _config(ctx_len + 64, 1, threads, flash_attn=flash_attn, hogwild=False, cache=cache))
    toks = _tokens(rng, ctx_len, model.n_vocab)

    def once():
        ctx.clear()
        ctx.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])

    ms = _median_ms(once, repeats, warmup=1)
    ctx.close()
    return ms


FLASH = {"off": ("off",), "on": ("on",), "auto": ("auto",), "both": ("off", "on")}


def run(model_path: str, workers: list[int], ctxs: list[int], steps: int = 20, n_gpu_layers: int = 0,
        threads: int = 0, device: str = "cpu", flash: str = "off", cache=("f16", "f16"), kernels: bool = False,
        placement: dict | None = None, progress=lambda msg: None,
        on_row=lambda row, rows, profiles: None) -> tuple[list[Row], list[dict]]:
    """The rows, and (with kernels) a kernel profile of each hogwild and batched step; placement: Model's
    split_mode, tensor_split, main_gpu. on_row(row, rows so far, profiles so far): after each row, so that
    a run cut short keeps what it measured."""
    model = Model(model_path, n_gpu_layers=n_gpu_layers, **(placement or {}))
    rng = random.Random(0)
    rows, profiles = [], []
    name = str(model_path).rsplit("/", 1)[-1]
    for ctx_len in ctxs:
        for fa in FLASH[flash]:
            label = f"ctx {ctx_len}, flash attention {fa}"
            progress(f"{label}: single sequence and re-prefill")
            single = batched_step(model, 1, ctx_len, steps, threads, rng, fa, cache)
            prefill = prefill_ms(model, ctx_len, threads, rng, flash_attn=fa, cache=cache)
            for w in workers:
                progress(f"{label}: {w} workers, hogwild and batched steps in turn")
                hw_step, hw_cache = hogwild_setup(model, w, ctx_len, steps, threads, rng, fa, cache)
                b_step, b_ctx = batched_setup(model, w, ctx_len, steps, threads, rng, fa, cache)
                hw, batched = _paired_median_ms(hw_step, b_step, steps)
                hw_prof = kernel_profile(hw_step) if kernels else None
                b_prof = kernel_profile(b_step) if kernels else None
                cells, unique, resolved = hw_cache.used_cells(), hw_cache.unique_tokens(), hw_cache.ctx.flash_attn
                shadows = hw_cache.ctx.last_shadows()[0]
                hw_cache.ctx.close()
                b_ctx.close()
                rows.append(Row(device=device, model=name, workers=w, ctx=ctx_len, flash_attn=resolved,
                                hogwild_step_ms=round(hw, 4), batched_step_ms=round(batched, 4),
                                single_step_ms=round(single, 4), reprefill_step_ms=round(w * prefill, 4),
                                overhead_ratio=round(hw / batched, 3),
                                speedup_vs_single=round(w * single / hw, 3),
                                kv_cells=cells, unique_tokens=unique, cache_type_k=cache[0], cache_type_v=cache[1],
                                hogwild_kernels=hw_prof and hw_prof["kernels"],
                                batched_kernels=b_prof and b_prof["kernels"],
                                hogwild_gpu_ms=hw_prof and round(hw_prof["gpu_ms"], 4),
                                batched_gpu_ms=b_prof and round(b_prof["gpu_ms"], 4), shadows=shadows))
                if hw_prof and b_prof:
                    profiles.append({"workers": w, "ctx": ctx_len, "flash_attn": resolved,
                                     "hogwild": hw_prof, "batched": b_prof})
                on_row(rows[-1], rows, profiles)
    model.close()
    return rows, profiles


def markdown_header(row) -> str:
    """A Markdown table's header for rows like `row` (Row or E2ERow): printed before the first row."""
    keys = list(asdict(row).keys())
    return "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys)


def markdown_row(row) -> str:
    return "| " + " | ".join(str(v) for v in asdict(row).values()) + " |"


# --- end to end: the engine's own loop -------------------------------------------------------------

E2E_PROBLEM = ("A bakery sells muffins in boxes of 6. On Monday it bakes 9 boxes and sells 40 muffins. "
               "How many muffins are left?")


@dataclass
class E2ERow:
    device: str
    model: str
    workers: int
    steps: int
    tokens: int                 # generated by all workers together
    tok_per_s: float            # aggregate
    ms_per_step: float          # wall time of a step of the loop (decode, sampling, bookkeeping, events)
    decode_ms_per_step: float   # of which inside the step's decode (SharedCache.decode: ops and llama_decode)
    loop_overhead: float        # ms_per_step / decode_ms_per_step
    speedup_vs_1: float | None  # tok_per_s against the W=1 row of the same run
    final_ctx: int              # used KV cells at the end
    graphs_reused: float        # share of the run's decodes that reused the previous compute graph
    boundary_steps: int         # steps whose decode wrote more than a token for a worker (a new step's label, headers)
    boundary_share: float       # their share of the run's time
    plain_ms_per_step: float | None  # wall time of a step of the others (one token a writing worker)
    # `hogwild bench`'s steps at the same W, at the run's mean view length, timed right after the run (compare):
    view_ctx: int | None = None             # mean tokens in a worker's view over the run (first and last step)
    bench_hogwild_ms: float | None = None   # the bench's hogwild step
    bench_batched_ms: float | None = None   # stock llama.cpp, W sequences of view_ctx tokens
    bench_single_ms: float | None = None    # stock llama.cpp, one sequence
    run_vs_bench: float | None = None       # ms_per_step / bench_hogwild_ms: what the loop adds to a step
    plain_vs_bench: float | None = None     # plain_ms_per_step / bench_hogwild_ms: the same, step boundaries left out
    bound_batched: float | None = None      # W·single / batched: the speedup stock batching allows
    bound_hogwild: float | None = None      # W·single / hogwild step: the speedup our step allows (free loop)


def run_e2e(model_path: str, workers: list[int], steps: int = 128, step_tokens: int = 24, n_gpu_layers: int = 0,
            threads: int = 0, device: str = "cpu", flash: str = "auto", cache=("f16", "f16"), n_ctx: int = 0,
            problem: str | None = None, placement: dict | None = None, compare: bool = True,
            progress=lambda msg: None, on_row=lambda row, rows: None) -> list[E2ERow]:
    """`hogwild run`'s loop (Engine.stream, greedy, no trace) for each W: aggregate tokens/s, ms per step
    and the share of it spent decoding. Steps end every `step_tokens` sampled tokens (random weights
    never end one), so commits, folds and new steps are timed too; no finisher.

    compare: then, in the same process, the bench's hogwild, batched and single steps at the same W and
    the run's mean view length: what the loop adds to a step, and the speedups the steps allow.
    on_row(row, rows so far): after each W."""
    from .engine import DoneEvent, Engine
    from .settings import Settings

    model = Model(model_path, n_gpu_layers=n_gpu_layers, **(placement or {}))
    name = str(model_path).rsplit("/", 1)[-1]
    text = problem or E2E_PROBLEM
    rows: list[E2ERow] = []
    base = None
    for w in workers:
        progress(f"end to end: {w} workers, {steps} steps")
        s = Settings(workers=w, max_steps=steps, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, threads=threads, temp=0.0,
                     flash_attn=flash, cache_type_k=cache[0], cache_type_v=cache[1], finisher_tokens=0,
                     check_every=0, bench_step_tokens=step_tokens)
        engine = Engine(model, s)
        first = []  # the mean view length when the first step begins
        engine.on_step = lambda e, step: first.append(_mean_view(e)) if step == 0 else None
        try:
            result = next(e.result for e in engine.stream(text) if isinstance(e, DoneEvent))
            cells, reused, last = engine.cache.used_cells(), engine.ctx.graphs_reused(), _mean_view(engine)
        finally:
            engine.close()
        tokens = sum(result.generated.values())
        tps = tokens / result.generate_s
        base = tps if w == 1 else base
        row = E2ERow(device=device, model=name, workers=w, steps=result.steps, tokens=tokens,
                     tok_per_s=round(tps, 2), ms_per_step=round(1e3 * result.generate_s / result.steps, 3),
                     decode_ms_per_step=round(1e3 * result.decode_s / result.steps, 3),
                     loop_overhead=round(result.generate_s / result.decode_s, 3),
                     speedup_vs_1=round(tps / base, 3) if base else None, final_ctx=cells,
                     graphs_reused=round(reused / result.steps, 3), boundary_steps=result.boundary_steps,
                     boundary_share=round(result.boundary_s / result.generate_s, 3),
                     plain_ms_per_step=round(1e3 * (result.generate_s - result.boundary_s)
                                             / (result.steps - result.boundary_steps), 3)
                     if result.steps > result.boundary_steps else None,
                     view_ctx=round(((first or [last])[0] + last) / 2))
        if compare:
            progress(f"end to end: {w} workers, the bench's steps at {row.view_ctx} tokens a view")
            _compare(row, model, threads, flash, cache)
        rows.append(row)
        on_row(row, rows)
    model.close()
    return rows


def _mean_view(engine) -> float:
    return statistics.mean(engine.cache.view_length(w.index) for w in engine.workers)


def _compare(row: E2ERow, model: Model, threads: int, flash: str, cache, steps: int = 20) -> None:
    """The bench's steps for an end-to-end row, at its W and mean view length (fills the row's bench fields)."""
    rng, w, n = random.Random(0), row.workers, row.view_ctx
    single = batched_step(model, 1, n, steps, threads, rng, flash, cache)
    hw_step, hw_cache = hogwild_setup(model, w, n, steps, threads, rng, flash, cache)
    b_step, b_ctx = batched_setup(model, w, n, steps, threads, rng, flash, cache)
    try:
        hw, batched = _paired_median_ms(hw_step, b_step, steps)
    finally:
        hw_cache.ctx.close()
        b_ctx.close()
    row.bench_hogwild_ms, row.bench_batched_ms, row.bench_single_ms = round(hw, 4), round(batched, 4), round(single, 4)
    # the ratios of the numbers as the row gives them
    row.run_vs_bench = round(row.ms_per_step / row.bench_hogwild_ms, 3)
    if row.plain_ms_per_step is not None:
        row.plain_vs_bench = round(row.plain_ms_per_step / row.bench_hogwild_ms, 3)
    row.bound_batched = round(w * row.bench_single_ms / row.bench_batched_ms, 3)
    row.bound_hogwild = round(w * row.bench_single_ms / row.bench_hogwild_ms, 3)
