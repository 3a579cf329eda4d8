"""Where a step of `hogwild run`'s loop spends its time: cProfile over `hogwild bench --e2e`'s run (the
engine's own loop), each function's own time per step, the largest first; with --decodes instead, every
decode timed to its end on the device, grouped by whether llama.cpp reused the previous compute graph
and by batch size (what a new graph costs).

    python benchmarks/e2e_profile.py MODEL [-np 8] [--steps 200] [-c 8192] [-ngl 99] [--top 30] [--decodes]

The profiler slows Python down (roughly 2x): read the shares, not the absolute times.
"""

import argparse
import cProfile
import pstats
import statistics
import time

from hogwild_cpp import bench
from hogwild_cpp.native import Context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-np", "--workers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--step-tokens", type=int, default=24)
    ap.add_argument("-c", "--ctx-size", type=int, default=8192)
    ap.add_argument("-ngl", "--gpu-layers", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--decodes", action="store_true", help="time each decode instead (no profiler)")
    a = ap.parse_args()
    if a.decodes:
        return by_decode(a)
    prof = cProfile.Profile()
    prof.enable()
    row, = bench.run_e2e(a.model, [a.workers], steps=a.steps, step_tokens=a.step_tokens, n_gpu_layers=a.gpu_layers,
                         threads=a.threads, n_ctx=a.ctx_size, compare=False)
    prof.disable()
    print(f"W={row.workers}: {row.ms_per_step} ms a step (profiled), {row.decode_ms_per_step} in the decode")
    stats = pstats.Stats(prof).stats
    own = sorted(((tt, nc, f"{f.rsplit('/', 1)[-1]}:{line}({fn})") for (f, line, fn), (_, nc, tt, _, _) in stats.items()),
                 reverse=True)
    for tt, nc, where in own[:a.top]:
        print(f"{1e3 * tt / row.steps:8.3f} ms/step {nc / row.steps:8.1f} calls/step  {where}")


def by_decode(a) -> None:
    """Each decode of the run, synchronised and timed, grouped by (graph reused, tokens in the batch)."""
    plain, groups = Context.decode, {}

    def timed(ctx, items, copy_logits=True):
        before = ctx.graphs_reused()
        t0 = time.perf_counter()
        out = plain(ctx, items, copy_logits=copy_logits)
        ctx.synchronize()
        key = ("reused" if ctx.graphs_reused() > before else "new graph", len(items))
        groups.setdefault(key, []).append(1e3 * (time.perf_counter() - t0))
        return out

    Context.decode = timed
    try:
        row, = bench.run_e2e(a.model, [a.workers], steps=a.steps, step_tokens=a.step_tokens,
                             n_gpu_layers=a.gpu_layers, threads=a.threads, n_ctx=a.ctx_size, compare=False)
    finally:
        Context.decode = plain
    print(f"W={row.workers}: {row.ms_per_step} ms a step, {row.steps} steps; decodes by graph and batch size:")
    for (graph, n), ms in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        if len(ms) >= 2 or n <= 64:
            print(f"  {graph:9s} {n:4d} tokens: {len(ms):5d} decodes, median {statistics.median(ms):7.3f} ms, "
                  f"total {sum(ms) / row.steps:6.3f} ms/step")


if __name__ == "__main__":
    main()
