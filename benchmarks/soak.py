"""Soak: 4 workers on the default model, the same long run several times over one loaded model, RSS sampled.

Usage: python benchmarks/soak.py [ROUNDS] [STEPS] [N_CTX]   (make soak; defaults 4, 600, 8192)

Within a run, RSS grows with the context in use (llama.cpp's per-cell bookkeeping, the compute
buffer's pages as the KV length grows): bounded by N_CTX and given back when the context closes.
A leak grows with the steps run instead, so every round (same seed, same tokens) would end higher
than the one before. The verdict compares the last round's samples with the round before.
"""

import sys
import time

from hogwild_cpp.engine import DoneEvent, Engine, Settings, TokenEvent
from hogwild_cpp.default_model import default_model
from hogwild_cpp.native import Model

EVERY = 400  # tokens between samples
TOLERANCE_MIB = 2.0


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_round(model: Model, problem: str, steps: int, n_ctx: int) -> tuple[dict[int, float], float, str]:
    # temperature > 0 so that the workers' texts differ; the same seed makes every round the same run
    engine = Engine(model, Settings(workers=4, max_steps=steps, n_ctx=n_ctx, temp=0.8, seed=1))
    samples, tokens, t0 = {}, 0, time.perf_counter()
    for ev in engine.stream(problem):
        if isinstance(ev, TokenEvent):
            tokens += 1
            if tokens % EVERY == 0:
                samples[tokens] = rss_mib()
        elif isinstance(ev, DoneEvent):
            result = ev.result
    samples[tokens] = rss_mib()
    cells = engine.cache.used_cells()
    engine.close()
    closed = rss_mib()
    summary = (f"{result.reason} after {result.steps} steps, {tokens} tokens, {cells} KV cells, "
               f"{time.perf_counter() - t0:.0f} s")
    return samples, closed, summary


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    n_ctx = int(sys.argv[3]) if len(sys.argv) > 3 else 8192
    model = Model(default_model())
    problem = open("examples/prompt.txt").read()
    print(f"model loaded: RSS {rss_mib():.1f} MiB; {rounds} rounds of 4 workers, {steps} steps, n_ctx {n_ctx}",
          flush=True)
    results = []
    for r in range(rounds):
        samples, closed, summary = one_round(model, problem, steps, n_ctx)
        results.append((samples, closed))
        first, last = min(samples), max(samples)
        print(f"round {r + 1}: {summary}; RSS {samples[first]:.1f} MiB at {first} tokens -> "
              f"{samples[last]:.1f} at {last} -> {closed:.1f} after closing the context", flush=True)
    marks = sorted(results[0][0])
    print("\n| tokens | " + " | ".join(f"round {r + 1} RSS MiB" for r in range(rounds)) + " |")
    print("|---|" + "---|" * rounds)
    for n in marks:
        print(f"| {n} | " + " | ".join(f"{s.get(n, float('nan')):.1f}" for s, _ in results) + " |")
    print("| closed | " + " | ".join(f"{c:.1f}" for _, c in results) + " |")
    model.close()
    if rounds < 2:
        return
    # A leak adds the same amount every round, so it shows between the last two rounds as between
    # any two. The first rounds may also grow by a few MiB that later rounds do not repeat: glibc
    # raises its mmap threshold when a large block is freed, and serves later ones from its heap
    # (with MALLOC_MMAP_THRESHOLD_=65536 the first round is already flat).
    (prev, prev_closed), (last, last_closed) = results[-2], results[-1]
    step = max([last[n] - prev[n] for n in last if n in prev] + [last_closed - prev_closed])
    print("\nper round, the largest rise over the round before at the same token count: "
          + ", ".join(f"{max(b[n] - a[n] for n in b if n in a):+.1f}" for (a, _), (b, _) in zip(results, results[1:]))
          + " MiB")
    ok = step <= TOLERANCE_MIB
    print(f"last round against the one before: {step:+.1f} MiB (tolerance {TOLERANCE_MIB} MiB): "
          f"{'no growth after warm-up' if ok else 'GROWS'}")
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    main()
