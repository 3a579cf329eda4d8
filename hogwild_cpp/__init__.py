"""Hogwild! Inference on llama.cpp: several workers, one shared KV cache (arXiv 2504.06261).

The public API, and the command line's only way in:

    from hogwild_cpp import Hogwild
    hw = Hogwild("model.gguf", workers=2, layout="combined", max_steps=256)
    result = hw.run(problem)                          # a Result
    for event in hw.stream(problem): ...              # Progress, StepStart, TokenEvent, StepEvent, ..., DoneEvent
    run = hw.start(problem, trace="trace.jsonl")      # a Run: its names, events(), stop(), trace_error,
                                                      # prompt_text()
    Hogwild("model.gguf", protocol="my_protocol.toml")   # every text the engine writes (load_protocol)

Failures: `errors.BadInput` (the model, the prompt or a setting cannot work), `errors.RunFailure`
(the run could not go on); anything else is a bug.
"""

from __future__ import annotations

from .errors import BadInput, HogwildError, RunFailure
from .protocol import Protocol
from .protocol import load as load_protocol
from .settings import Settings

__version__ = "0.1.0"
__all__ = ["Hogwild", "Run", "Settings", "Protocol", "load_protocol", "BadInput", "HogwildError", "RunFailure",
           "gpu_offload_supported", "set_verbose"]


def gpu_offload_supported() -> bool:
    """Whether the llama.cpp build can offload layers to a GPU."""
    from . import native
    return native.gpu_offload_supported()


def set_verbose(on: bool) -> None:
    """Echo llama.cpp's log to stderr."""
    from . import native
    native.set_verbose(on)


class Hogwild:
    """A loaded model and the settings its runs use.

    `settings` (a Settings) or keyword arguments of Settings; checked before the model is loaded.
    """

    def __init__(self, model_path, settings: Settings | None = None, **kw):
        from .native import Model

        self.settings = settings if settings is not None else Settings(**kw)
        self.settings.check()
        s = self.settings
        if s.rpc:
            from .native import add_rpc_servers
            add_rpc_servers(s.rpc)
        self.model = Model(model_path, n_gpu_layers=s.n_gpu_layers, split_mode=s.split_mode,
                           tensor_split=s.tensor_split, main_gpu=s.main_gpu,
                           fit_for=(s.n_ctx, s.cache_type_k, s.cache_type_v))

    def start(self, problem: str, trace=None) -> Run:
        """A run of `problem`, ready to stream; `trace`: a path for the JSONL trace."""
        from .engine import Engine

        return Run(Engine(self.model, self.settings, trace_path=trace), problem)

    def stream(self, problem: str, trace=None):
        """Yield the events of a run (Progress, SetupProgress, StepStart, TokenEvent, StepEvent, DecodeProgress,
        then DoneEvent with the result)."""
        run = self.start(problem, trace=trace)
        try:
            yield from run.events()
        finally:
            run.close()

    def run(self, problem: str, trace=None):
        """Run to the end and return the `Result`."""
        from .engine import DoneEvent

        for event in self.stream(problem, trace=trace):
            if isinstance(event, DoneEvent):
                return event.result
        raise RuntimeError("the engine stopped without a result")

    def close(self) -> None:
        self.model.close()


class Run:
    """One run: its workers' names, its events, a way to stop it within a step."""

    def __init__(self, engine, problem: str):
        self._engine, self._problem = engine, problem
        self.names: list[str] = list(engine.names)

    def events(self):
        """The run's events; the engine is closed when they end (or fail)."""
        try:
            yield from self._engine.stream(self._problem)
        finally:
            self.close()

    def prompt_text(self) -> str:
        """The prompt the workers read first: the rules and the problem, through the chat template."""
        return self._engine.prompt_text(self._problem)

    def stop(self) -> None:
        """End the run after the current step (reason `interrupted`); safe from a signal handler."""
        self._engine.stop_requested = True

    @property
    def trace_error(self) -> OSError | None:
        """Why the trace could not be written, if it could not (the run went on without it)."""
        return self._engine.trace.error if self._engine.trace is not None else None

    def close(self) -> None:
        self._engine.close()
