"""The settings of a run: one record, the values each setting may take, and their checks.

This module imports nothing heavy, so the command line can build its options (and `--help`) from
it without loading llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadInput
from .layouts import LAYOUTS
from .protocol import resolve as resolve_protocol

# KV cache types: ggml type ids (ggml.h)
CACHE_TYPES = {"f16": 1, "f32": 0, "q8_0": 8, "q4_0": 2}
# flash attention: enum llama_flash_attn_type
FLASH_ATTN = {"auto": -1, "on": 1, "off": 0}
QUANTIZED = {"q8_0", "q4_0"}
# how llama.cpp splits a model over several devices: enum llama_split_mode
SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}


def parse_endpoint(text: str) -> tuple[str, int]:
    """HOST:PORT of a llama.cpp RPC server ([v6]:port too)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"not an RPC endpoint (HOST:PORT): {text!r}")
    return host.strip("[]"), int(port)


@dataclass
class Settings:
    workers: int = 2
    layout: str = "combined"        # a key of layouts.LAYOUTS
    names: list[str] | None = None
    max_steps: int = 512            # budget, in parallel decode steps (-1: until an answer or the context is full)
    n_ctx: int = 0                  # 0: from the model, capped to 8192
    n_gpu_layers: int | str = "auto"  # layers on the GPUs: a number, -1 (all) or "auto" (what fits; offload.py)
    threads: int = 0                # 0: the physical cores this process may use (cpu.py)
    seed: int = 0
    system_prompt: str | None = None  # the user's system prompt, before the rules (protocol.chat_prompt)
    temp: float = 0.6
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    check_every: int | None = None  # the self-check every N tokens of finished steps (0: never; None: the protocol's)
    stop_on_eos: bool = False
    finisher_tokens: int | None = None  # at most N tokens after the finisher's text (None: the protocol's)
    protocol: object = None         # every text the engine writes: None (protocol.toml), a file path, or a Protocol
    instructions_in: str | None = None  # the rules in the "user" or "system" message (None: the protocol's)
    n_batch: int = 512
    cache_type_k: str = "f16"       # a key of CACHE_TYPES
    cache_type_v: str = "f16"       # quantized: flash attention only (as in llama.cpp)
    flash_attn: str = "auto"        # a key of FLASH_ATTN (auto: on where the backend supports it)
    split_mode: str = "layer"       # a key of SPLIT_MODES: several GPUs or RPC devices (llama.cpp's -sm)
    tensor_split: list[float] | None = None  # the share of each device (llama.cpp's -ts)
    main_gpu: int = 0               # the device of split mode none (llama.cpp's -mg)
    rpc: list[str] | None = None    # llama.cpp RPC servers (HOST:PORT) whose devices take layers (--rpc)
    bench_step_tokens: int = 0      # benchmarks only: a step also ends after N sampled tokens (random weights
                                    # never end one), so that commits and folds are timed too

    def check(self) -> None:
        """BadInput if a setting cannot work, before any model is touched."""
        if self.workers < 1:
            raise BadInput(f"{self.workers} workers: at least one is needed")
        if self.max_steps == 0 or self.max_steps < -1:
            raise BadInput(f"max_steps is the budget in steps, at least 1 (-1: until an answer or the context is "
                           f"full), not {self.max_steps}")
        if self.n_gpu_layers != "auto" and not (isinstance(self.n_gpu_layers, int) and self.n_gpu_layers >= -1):
            raise BadInput(f"n_gpu_layers is a number of layers, -1 (all) or 'auto', not {self.n_gpu_layers!r}")
        if self.layout not in LAYOUTS:
            raise BadInput(f"unknown layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")
        if self.names is not None:
            if len(self.names) != self.workers:
                raise BadInput(f"{len(self.names)} names for {self.workers} workers")
            if any(not n.strip() for n in self.names):
                raise BadInput("a worker's name is empty")
            if len(set(self.names)) != len(self.names):
                raise BadInput("two workers have the same name")
        for which, t in (("K", self.cache_type_k), ("V", self.cache_type_v)):
            if t not in CACHE_TYPES:
                raise BadInput(f"unknown {which} cache type {t!r}; choose from {', '.join(CACHE_TYPES)}")
        if self.flash_attn not in FLASH_ATTN:
            raise BadInput(f"unknown flash attention setting {self.flash_attn!r}; choose from {', '.join(FLASH_ATTN)}")
        if self.cache_type_v in QUANTIZED and self.flash_attn == "off":
            raise BadInput(f"a quantized V cache ({self.cache_type_v}) needs flash attention (-fa on or auto)")
        if self.instructions_in not in (None, "user", "system"):
            raise BadInput(f"instructions go in the 'user' or the 'system' message, not {self.instructions_in!r}")
        if self.check_every is not None and self.check_every < 0:
            raise BadInput(f"check_every must be 0 (never) or more, got {self.check_every}")
        if self.split_mode not in SPLIT_MODES:
            raise BadInput(f"unknown split mode {self.split_mode!r}; choose from {', '.join(SPLIT_MODES)}")
        if self.tensor_split is not None and (any(x < 0 for x in self.tensor_split) or not sum(self.tensor_split) > 0):
            raise BadInput(f"--tensor-split needs non-negative shares, not all zero: {self.tensor_split}")
        if self.main_gpu < 0:
            raise BadInput(f"--main-gpu must be 0 or more, got {self.main_gpu}")
        for ep in self.rpc or []:
            parse_endpoint(ep)
        if self.bench_step_tokens < 0:
            raise BadInput(f"bench_step_tokens must be 0 (off) or more, got {self.bench_step_tokens}")
        if self.finisher_tokens is not None and self.finisher_tokens < 0:
            raise BadInput(f"finisher_tokens must be 0 (no finisher) or more, got {self.finisher_tokens}")
        resolve_protocol(self.protocol)  # a file that cannot be read or has unknown keys: BadInput, one line
