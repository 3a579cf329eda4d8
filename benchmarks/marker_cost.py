"""What the combined layout's markers and own headers cost a decode step, measured on the engine itself.

Engines over the same model run in one process, their decode steps taken in turn (step i of every
variant, then step i+1, ...), so a shared machine's drift hits them alike. Their workers are scripted
(each writes a fixed text, the same in every variant), so the views differ only by the layout texts:

  full        the shipped protocol: a marker after each other worker's unfinished step, an own header
  no-markers  the same with layout.marker = "" (no marker blocks)
  neither     also layout.own_header = "" (no own-header blocks either)

Each row: the median wall time of `Engine._decode_step` over the timed steps; the median over steps of
(this variant's step i) / (full's step i), steps taken next to each other on the same tokens, which
drift on a shared machine disturbs less than a ratio of medians; and the median per-view copies
(shadows) a step wrote.

    .venv/bin/python benchmarks/marker_cost.py [MODEL] [--workers 2,4] [--steps 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hogwild_cpp import protocol as P  # noqa: E402
from hogwild_cpp.engine import Engine, Settings  # noqa: E402
from hogwild_cpp.native import Model  # noqa: E402

PROBLEM = Path(__file__).resolve().parent.parent.joinpath("examples", "prompt.txt").read_text()
TEXTS = [
    "Nine boxes of six muffins make 54 muffins on Monday, and 40 are sold, so 14 are left. ",
    "On Tuesday five more boxes add 30 muffins, so there are 44 before the sales. ",
    "Then 27 muffins are sold on Tuesday, which leaves 17 at the end of the day. ",
    "Let me check: 54 + 30 = 84 baked, 40 + 27 = 67 sold, and 84 - 67 = 17. ",
]


class Script:
    def __init__(self, tokens):
        self.tokens, self.i = tokens, 0

    def sample(self, logits):
        self.i += 1
        return self.tokens[(self.i - 1) % len(self.tokens)]

    def close(self):
        pass


def variant(name: str) -> P.Protocol:
    values = dict(P.default().values)
    if name in ("no-markers", "neither"):
        values["layout.marker"] = ""
    if name == "neither":
        values["layout.own_header"] = ""
    return P.Protocol(values, source=name)


def timed_engine(model, workers, steps, threads, name):
    engine = Engine(model, Settings(workers=workers, layout="combined", max_steps=steps, threads=threads,
                                    n_ctx=8192, finisher_tokens=0, check_every=0, protocol=variant(name)))
    scripts = {}
    for i, w in enumerate(engine.workers):  # worker i: the texts from the i-th on, a step every two sentences
        text = "".join(TEXTS[(i + k) % len(TEXTS)] + ("\n\n" if k % 2 else "") for k in range(8))
        scripts[id(w.sampler)] = Script(model.tokenize(text))
    # the engine samples every worker in one native call: the scripts stand in for it
    engine.ctx.sample = lambda outputs, samplers, *a, **k: [scripts[id(s)].sample(None) for s in samplers]
    times: list[float] = []
    shadows: list[int] = []
    inner = engine._decode_step

    def decode_step():
        t0 = time.perf_counter()
        out = inner()
        times.append((time.perf_counter() - t0) * 1e3)
        shadows.append(engine.ctx.last_shadows()[0])
        return out

    engine._decode_step = decode_step
    engine.shadow_counts = shadows
    return engine, engine.stream(PROBLEM), times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--workers", default="2,4")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.model is None:
        from hogwild_cpp.default_model import default_model
        args.model = default_model()
    model = Model(args.model)
    names = ["full", "no-markers", "neither"]
    print("| workers | variant | median step ms | ratio of medians | median paired ratio | shadows | steps timed |")
    print("|---|---|---|---|---|---|---|")
    for W in (int(x) for x in args.workers.split(",")):
        runs = {n: timed_engine(model, W, args.steps, args.threads, n) for n in names}
        for engine, gen, times in runs.values():  # the prefill of each, then step by step in turn
            while not times:
                next(gen)
        live = set(names)
        while live:
            for n in names:
                if n not in live:
                    continue
                engine, gen, times = runs[n]
                before = len(times)
                try:
                    while len(times) == before:
                        next(gen)
                except StopIteration:
                    live.discard(n)
        med = {n: statistics.median(runs[n][2][args.warmup:]) for n in names}
        full = runs["full"][2]
        for n in names:
            t = runs[n][2]
            k = min(len(t), len(full))
            paired = statistics.median(t[i] / full[i] for i in range(args.warmup, k))
            sh = statistics.median(runs[n][0].shadow_counts[args.warmup:])
            print(f"| {W} | {n} | {med[n]:.2f} | {med[n] / med['full']:.3f} | {paired:.3f} | {sh:.0f} | "
                  f"{len(t) - args.warmup} |", flush=True)
        for engine, gen, times in runs.values():
            gen.close()
            engine.close()
    model.close()


if __name__ == "__main__":
    main()
