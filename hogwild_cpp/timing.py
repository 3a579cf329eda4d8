"""The timing block printed on stderr at the end of `hogwild run` and `hogwild complete`, after the
answer, as ollama's --verbose and mlx-lm's generate do: load time, the prompt's tokens and rate, the
tokens generated and their aggregate rate, each worker's tokens and finished steps, milliseconds a
decode step, peak memory (the process's RSS; each GPU's memory in use, on a build with one) and the
total wall time. `complete` prints the same block for its one sequence, so the two compare like for
like. `--json` puts the same numbers (Timing.to_dict) in its done event.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field


@dataclass
class GpuPeak:
    """One GPU's memory in use (by every process on it: the driver tells no more) before the model
    loaded and at the highest seen during the run, in bytes."""
    device: str
    before: int
    peak: int
    total: int


class PeakMemory:
    """The process's peak RSS (the kernel's high-water mark) and each GPU's peak memory in use, sampled
    when asked, at most once every `interval` seconds; made before the model loads (its GPU baseline)."""

    def __init__(self, interval: float = 0.5, clock=time.monotonic):
        self.interval, self.clock, self.last = interval, clock, None
        self.gpus: dict[str, GpuPeak] = {}
        for name, free, total in _gpu_memory():
            self.gpus[name] = GpuPeak(name, total - free, total - free, total)

    def sample(self, force: bool = False) -> None:
        now = self.clock()
        if not self.gpus or (not force and self.last is not None and now - self.last < self.interval):
            return
        self.last = now
        for name, free, total in _gpu_memory():
            if name in self.gpus:
                self.gpus[name].peak = max(self.gpus[name].peak, total - free)

    @staticmethod
    def peak_rss() -> int:
        """Bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024


def _gpu_memory() -> list[tuple[str, int, int]]:
    try:
        from . import native
        return native.gpu_memory()
    except Exception:  # no libggml loaded, an old build: the block goes without the GPU's memory
        return []


@dataclass
class Timing:
    load_s: float                      # the model loaded and the context made
    prompt_tokens: int
    prompt_s: float                    # the prompt's prefill (run: and the layout's headers and markers)
    generated: dict[str, int]          # tokens sampled by each worker (complete: by its one sequence)
    generate_s: float
    steps: int                         # parallel decode steps (complete: one a token)
    total_s: float                     # the whole command, wall clock
    peak_rss: int                      # bytes
    worker_steps: dict[str, int] | None = None   # each worker's finished steps (None: complete)
    gpus: list[GpuPeak] = field(default_factory=list)

    @property
    def generated_tokens(self) -> int:
        return sum(self.generated.values())

    def lines(self) -> list[str]:
        n = self.generated_tokens
        rows = [("load", f"{self.load_s:.2f} s"),
                ("prompt", f"{self.prompt_tokens} tokens in {self.prompt_s:.2f} s "
                           f"({_rate(self.prompt_tokens, self.prompt_s)} tok/s)"),
                ("generated", f"{n} tokens in {self.generate_s:.2f} s ({_rate(n, self.generate_s)} tok/s)")]
        if self.worker_steps is not None:
            steps = self.worker_steps
            rows.append(("workers", ", ".join(f"{w} {_count(t, 'token')} in {_count(steps.get(w, 0), 'step')}"
                                              for w, t in self.generated.items())))
        rows.append(("steps", f"{self.steps} decode steps, "
                              f"{1000 * self.generate_s / self.steps if self.steps else 0.0:.1f} ms a step"))
        memory = [f"peak RSS {size(self.peak_rss)}"]
        memory += [f"{g.device} {size(g.peak)} of {size(g.total)} in use at peak "
                   f"({'+' if g.peak >= g.before else '-'}{size(abs(g.peak - g.before))} since the start)"
                   for g in self.gpus]
        rows += [("memory", "; ".join(memory)), ("total", f"{self.total_s:.2f} s")]
        return [f"{name + ':':<11}{value}" for name, value in rows]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["generated_tokens"] = self.generated_tokens
        d["ms_per_step"] = 1000 * self.generate_s / self.steps if self.steps else 0.0
        return d


def run_timing(result, load_s: float, memory: PeakMemory, total_s: float) -> Timing:
    """The block of a run, from its Result."""
    memory.sample(force=True)
    return Timing(load_s=load_s, prompt_tokens=result.prompt_tokens, prompt_s=result.prompt_s,
                  generated=dict(result.generated), generate_s=result.generate_s, steps=result.steps,
                  total_s=total_s, peak_rss=memory.peak_rss(), worker_steps=dict(result.finished_steps),
                  gpus=list(memory.gpus.values()))


def print_block(timing: Timing, stream=None) -> None:
    """On stderr, after what stdout has (the answer) is out."""
    sys.stdout.flush()
    print("\n".join(timing.lines()), file=stream if stream is not None else sys.stderr)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _rate(n: int, s: float) -> str:
    return f"{n / s:.1f}" if s > 0 else "-"


def size(n: float) -> str:
    """Bytes as a person reads them (KiB, MiB, GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
