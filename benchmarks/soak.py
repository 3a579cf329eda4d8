"""Soak: 4 workers on the default model for a long run, RSS sampled; prints a table.

Usage: python benchmarks/soak.py [STEPS] [N_CTX]   (make soak)
"""

import sys
import time

from hogwild_cpp.engine import DoneEvent, Engine, Settings, TokenEvent
from hogwild_cpp.models import default_model
from hogwild_cpp.native import Model


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    n_ctx = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
    model = Model(default_model())
    problem = open("examples/prompt.txt").read()
    # temperature > 0 so that the workers' texts differ; ctx_full ends the run early if it comes first
    engine = Engine(model, Settings(workers=4, max_steps=steps, n_ctx=n_ctx, temp=0.8, seed=1))
    samples, tokens, t0 = [(0, rss_mib())], 0, time.perf_counter()
    for ev in engine.stream(problem):
        if isinstance(ev, TokenEvent):
            tokens += 1
            if tokens % 400 == 0:
                samples.append((tokens, rss_mib()))
        elif isinstance(ev, DoneEvent):
            result = ev.result
    samples.append((tokens, rss_mib()))
    print(f"stop: {result.reason} after {result.steps} steps, {tokens} tokens, "
          f"{time.perf_counter() - t0:.0f} s, {engine.cache.used_cells()} KV cells")
    print("| tokens | RSS MiB |\n|---|---|")
    for n, r in samples:
        print(f"| {n} | {r:.1f} |")
    warm = [r for n, r in samples if n >= 800]
    if len(warm) > 1:
        print(f"after warm-up (800 tokens): {warm[0]:.1f} -> {warm[-1]:.1f} MiB ({warm[-1] - warm[0]:+.1f})")
    engine.close()
    model.close()


if __name__ == "__main__":
    main()
