"""Hogwild! Inference on llama.cpp: several workers, one shared KV cache (arXiv 2504.06261)."""

__version__ = "0.1.0"


class Hogwild:
    """Several workers, one shared KV cache: `Hogwild(model_path, workers=2).run(problem)`.

    Keyword arguments are those of `hogwild_cpp.engine.Settings` (layout, max_steps, temp, ...).
    """

    def __init__(self, model_path, workers: int = 2, layout: str = "combined", **settings):
        from .engine import Settings
        from .native import Model

        self.settings = Settings(workers=workers, layout=layout, **settings)
        self.model = Model(model_path, n_gpu_layers=self.settings.n_gpu_layers)

    def stream(self, problem: str, trace=None):
        """Yield engine events (Progress, TokenEvent, StepEvent, then DoneEvent with the result)."""
        from .engine import Engine

        engine = Engine(self.model, self.settings, trace_path=trace)
        try:
            yield from engine.stream(problem)
        finally:
            engine.close()

    def run(self, problem: str, trace=None):
        """Run to the end and return the `Result`."""
        from .engine import DoneEvent

        for event in self.stream(problem, trace=trace):
            if isinstance(event, DoneEvent):
                return event.result
        raise RuntimeError("the engine stopped without a result")

    def close(self) -> None:
        self.model.close()
