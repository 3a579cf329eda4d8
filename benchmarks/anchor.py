#!/usr/bin/env python3
"""Anchor timings: the reference PyTorch Hogwild! cache against plain transformers batched decoding.

The reference implementation (the `shared_cache` package of the paper's PyTorch code) is not part of
this repository. Put its files under a folder of your own (default `.anchor/hogwild_llm`, kept out of
git) so that `<impl>/shared_cache/cache_block.py`, `combined_cache.py` and `shared_cache_manager.py`
exist, and point `--impl` at that folder.

What is timed, for each worker count W and context length L (tokens in each worker's view):

  hogwild_llm           one decode step of W workers over the reference shared cache: each worker
                        appends one token; worker w sees [shared blocks, the other workers' current
                        steps, its own current step]. The step is the reference's own loop body:
                        SharedCacheManager.get_input_kwargs + model forward + last-position logits.
  transformers-batched  one decode step of W independent sequences of length L with a stock
                        transformers DynamicCache (one prefill of L tokens, copied W times).

The layout follows `hogwild bench`: own = min(32, L // (4W)) tokens in each current step,
shared = L - W*own tokens of which a quarter is the prompt and the rest 32-token finished steps.
`--history merged` keeps prompt and finished steps in one cache block, as the reference's own
generation loop does (it appends each finished step to a common block); `--history split` gives the
prompt and every finished step a block of its own, as our combined layout does.

Each row: median over --steps decode steps after 3 warm-up steps, with the device synchronised
before and after each step. Out-of-memory (and any other error) is recorded in the row.

Random weights, built from a LlamaConfig directly on the device: nothing is downloaded.

    python benchmarks/anchor.py --shape 1b --workers 1,2,4,8 --ctx 1024,8192 --steps 20 \
        --dtype bf16 --json anchor-1b.json
    python benchmarks/anchor.py --device cpu --threads 1 --layers 2 --hidden 256 --heads 4 \
        --kv-heads 2 --ffn 512 --vocab 1000 --workers 1,2 --ctx 256 --steps 3 --dtype f32 --check

The reference's helpers are torch.compile'd unless HOGWILD_NO_COMPILE=1 (`--no-compile`); warm-up
absorbs compilation, and each row records `compiles_in_timed_steps` (should be 0).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import json
import os
import platform
import statistics
import sys
import time
import traceback
import types
from pathlib import Path

STEP_LEN = 32     # tokens in each worker's current step and in each finished step (as in `hogwild bench`)
WARMUP = 3
PREFILL_CHUNK = 2048

# Same shapes as the `1b` and `8b` presets of models/gguf_gen.py (llama-3.2-1B-like, llama-3.1-8B-like).
SHAPES = {
    "1b": dict(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab=128256, rope_theta=500000.0),
    "8b": dict(layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256, rope_theta=500000.0),
}
DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def log(*parts) -> None:
    print("[anchor]", *parts, file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------------
# Loading the reference code, with the small adapters newer transformers releases need
# ---------------------------------------------------------------------------------------------

class Reference:
    """The reference classes, plus adapters applied only where this transformers release needs them.

    transformers 5.x changed four things the reference code (written against 4.5x) relies on:
      1. DynamicCache keeps per-layer tensors in `self.layers[i].keys/.values`; the reference reads
         `self.key_cache[i]` / `self.value_cache[i]` (and calls `.clear()` on them).
      2. Attention layers call `past_key_values.update(k, v, layer_idx)` without `cache_kwargs`; the
         reference needs `cache_kwargs['cache_position']` (and asserts that `cos`/`sin` are present,
         though it only slices them).
      3. `Cache.__init__` insists on `layers` or `layer_class_to_replicate`; the reference's view calls
         it with no argument. Mask sizes come from `Cache.get_mask_sizes`, which the reference's view
         does not define (the base version, finding no layers, would report a KV length of 1).
      4. RoPE parameters: `ROPE_INIT_FUNCTIONS` no longer has a "default" entry (each model computes
         its default frequencies itself); the reference looks it up.
    Also, the forward of 5.x models has no `cache_position` argument; it is dropped from the kwargs
    the reference's manager builds (the reference passes `position_ids` too, which is what is used).
    """

    def __init__(self, impl: Path, model):
        import torch
        from transformers import cache_utils

        impl = impl.resolve()
        if not (impl / "shared_cache" / "combined_cache.py").exists():
            raise SystemExit(f"no reference implementation under {impl} (expected shared_cache/combined_cache.py)")
        sys.path.insert(0, str(impl))
        # torch.compile imports its backends (which probe for triton) on first use: do that before
        # any triton stand-in exists, so torch sees the real state of the install
        torch.compile(lambda x: x, dynamic=True)
        stub = _install_triton_stub_if_missing()
        try:
            block_mod = importlib.import_module("shared_cache.cache_block")
            view_mod = importlib.import_module("shared_cache.combined_cache")
            manager_mod = importlib.import_module("shared_cache.shared_cache_manager")
        finally:
            if stub:  # only their module keeps the stub; torch must not think triton is installed
                for name in ("triton", "triton.language"):
                    sys.modules.pop(name, None)
        self.shims: list[str] = []
        self.block_mod, self.view_mod, self.manager_mod = block_mod, view_mod, manager_mod

        # 4. RoPE "default" entry
        from transformers import modeling_rope_utils
        if "default" not in modeling_rope_utils.ROPE_INIT_FUNCTIONS:
            rotary_cls = type(model.model.rotary_emb)

            def default_rope(config, device=None, *args, **kwargs):
                return rotary_cls.compute_default_rope_parameters(config, device=device)

            default_rope.anchor_adapter = True
            modeling_rope_utils.ROPE_INIT_FUNCTIONS["default"] = default_rope
        if getattr(modeling_rope_utils.ROPE_INIT_FUNCTIONS["default"], "anchor_adapter", False):
            self.shims.append("rope-default")

        # 1. key_cache / value_cache on the reference's CacheBlock
        BaseBlock = block_mod.CacheBlock
        if hasattr(cache_utils.DynamicCache(), "key_cache"):
            self.CacheBlock = BaseBlock
        else:
            class CacheBlock(BaseBlock):
                key_cache = property(lambda self: _LayerTensors(self.layers, "keys"))
                value_cache = property(lambda self: _LayerTensors(self.layers, "values"))

            self.CacheBlock = CacheBlock
            self.shims.append("key_cache/value_cache")

        # 2. + 3. the per-forward view
        BaseView = view_mod.CombinedCacheView
        try:
            cache_utils.Cache()
            needs_init = False
        except (TypeError, ValueError):
            needs_init = True
        needs_kwargs = "cache_kwargs" not in _update_call_source(model)

        class _CacheInit(cache_utils.Cache):
            def __init__(self, *args, **kwargs):
                if needs_init and not args and not kwargs:
                    cache_utils.Cache.__init__(self, layers=[])
                else:
                    cache_utils.Cache.__init__(self, *args, **kwargs)

        class CombinedCacheView(BaseView, _CacheInit):  # MRO: BaseView -> _CacheInit -> Cache
            def update(self, key_states, value_states, layer_idx, cache_kwargs=None, *args, **kwargs):
                if cache_kwargs is None:
                    n = key_states.shape[-2]
                    if self.position_ids is not None:
                        cache_position = self.position_ids[0]
                    else:
                        start = self.get_seq_length(layer_idx)
                        cache_position = torch.arange(start, start + n, device=key_states.device)
                    # cos/sin are only sliced by the reference, never read: an empty placeholder
                    placeholder = key_states.new_empty((key_states.shape[0], n, 0))
                    cache_kwargs = dict(cache_position=cache_position, cos=placeholder, sin=placeholder)
                return BaseView.update(self, key_states, value_states, layer_idx, cache_kwargs)

            # The reference sizes the mask from the 2-D attention mask its manager builds: the longest
            # worker view once every worker's new tokens are written (a worker also sees the token
            # another worker adds in this very step). transformers 5.x asks the cache instead.
            def _kv_length(self, query_length, layer_idx):
                write_to = self.write_to or [seq[-1] for seq in self.cache_structure]
                added = [query_length] * len(write_to) if self.input_mask is None else self.input_mask.sum(1).tolist()
                extra = {}
                for block, n in zip(write_to, added):
                    extra[id(block)] = extra.get(id(block), 0) + int(n)
                return max(sum(b.get_seq_length(layer_idx) + extra.get(id(b), 0) for b in seq)
                           for seq in self.cache_structure)

            # Reference.model_kwargs sets `mask_length` from the manager's own 2-D mask, as 4.x did
            mask_length = None

            def get_mask_sizes(self, query_length, layer_idx=0, *args, **kwargs):
                if isinstance(query_length, torch.Tensor):  # older releases pass cache_position here
                    query_length = query_length.shape[0]
                if self.mask_length is not None:
                    return self.mask_length, 0
                return self._kv_length(query_length, layer_idx), 0

            def get_query_offset(self, layer_idx=0):
                # = the manager's cache_position[0]: the new tokens sit at the end of the longest view
                n = self.position_ids.shape[-1] if self.position_ids is not None else 1
                return self.get_mask_sizes(n, layer_idx)[0] - n

        if needs_init or needs_kwargs or not hasattr(BaseView, "get_mask_sizes"):
            manager_mod.CombinedCacheView = CombinedCacheView  # the manager builds its view by this name
            self.shims.append("view:" + ",".join(
                n for n, on in (("Cache.__init__", needs_init), ("cache_kwargs", needs_kwargs),
                                ("get_mask_sizes/get_query_offset", True)) if on))
        self.SharedCacheManager = manager_mod.SharedCacheManager
        self.drop_cache_position = "cache_position" not in inspect.signature(type(model).forward).parameters
        if self.drop_cache_position:
            self.shims.append("drop cache_position kwarg")

    def model_kwargs(self, manager, input_ids):
        kwargs = manager.get_input_kwargs(input_ids=input_ids)
        view, mask = kwargs["past_key_values"], kwargs.get("attention_mask")
        if hasattr(view, "mask_length") and mask is not None:
            view.mask_length = mask.shape[-1]
        if self.drop_cache_position:
            kwargs.pop("cache_position", None)
        return kwargs


class _LayerTensors:
    """A list-like view of one tensor field of every layer of a transformers 5.x cache."""
    __slots__ = ("layers", "field")

    def __init__(self, layers, field):
        self.layers, self.field = layers, field

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return getattr(self.layers[i], self.field)

    def clear(self):
        self.layers.clear()


def _update_call_source(model) -> str:
    """The source line where the model's attention calls `past_key_values.update(...)`."""
    attn = type(model.model.layers[0].self_attn)
    try:
        src = inspect.getsource(attn.forward)
    except (OSError, TypeError):
        return "cache_kwargs"
    for line in src.splitlines():
        if "past_key_values.update(" in line or "past_key_value.update(" in line:
            return line
    return "cache_kwargs"


def _install_triton_stub_if_missing() -> bool:
    """The reference imports triton for an optional kernel path (APPLY_ROTARY_COS_SIN_TRITON=1) that
    is not used here; where triton is absent (CPU wheels) a stand-in lets the module import."""
    try:
        import triton  # noqa: F401
        return False
    except ImportError:
        pass
    if os.environ.get("APPLY_ROTARY_COS_SIN_TRITON", "0") not in ("", "0"):
        raise SystemExit("APPLY_ROTARY_COS_SIN_TRITON is set but triton is not installed")
    mod = types.ModuleType("triton")
    lang = types.ModuleType("triton.language")

    def jit(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

    def unavailable(*_, **__):
        raise RuntimeError("triton is not installed")

    mod.jit, mod.cdiv, mod.language = jit, (lambda a, b: -(-a // b)), lang
    lang.constexpr = lang.tensor = object
    lang.program_id = lang.arange = lang.load = lang.store = lang.cos = lang.sin = unavailable
    sys.modules["triton"], sys.modules["triton.language"] = mod, lang
    return True


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

def build_model(shape: dict, dtype, device: str, attn: str):
    import torch
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"], max_position_embeddings=131072,
        rope_theta=shape.get("rope_theta", 500000.0), rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    cfg._attn_implementation = attn
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.LlamaForCausalLM(cfg)  # initialised in place, on the device
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Layout and timing
# ---------------------------------------------------------------------------------------------

def layout(workers: int, ctx: int) -> tuple[int, int, int]:
    own = max(1, min(STEP_LEN, ctx // (4 * workers)))
    shared = ctx - workers * own
    prompt = max(1, shared // 4)
    if shared < prompt or shared < 1:
        raise ValueError(f"ctx {ctx} too small for {workers} workers")
    return own, shared, prompt


def sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_step_ms(step, steps: int, device: str) -> tuple[float, int]:
    """Median wall time of `steps` calls after WARMUP calls, and the graphs compiled while timing."""
    for i in range(WARMUP):
        step(i)
    graphs = _compiled_graphs()
    times = []
    for i in range(WARMUP, WARMUP + steps):
        sync(device)
        t0 = time.perf_counter()
        step(i)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), _compiled_graphs() - graphs


class HogwildSetup:
    """Reference cache blocks laid out like `hogwild bench`'s combined layout."""

    def __init__(self, ref: Reference, model, workers: int, ctx: int, history: str, tokens):
        import torch

        self.ref, self.model, self.workers = ref, model, workers
        own, shared, prompt_len = layout(workers, ctx)
        self.own, self.shared, self.prompt_len = own, shared, prompt_len
        config = model.config
        device = tokens.device

        # 1. all shared tokens (prompt, then the finished steps) into one block, in chunks
        common = ref.CacheBlock(config=config)
        self.shared_tokens = tokens[:shared]
        writer = ref.SharedCacheManager(cache_structure=[[common]])
        for a in range(0, shared, PREFILL_CHUNK):
            chunk = self.shared_tokens[a:a + PREFILL_CHUNK].view(1, -1)
            self.forward(writer, chunk, logits_to_keep=1)

        if history == "merged":
            self.shared_blocks = [common]
        else:
            # prompt and each finished step in a block of its own: the same keys/values, cut at the
            # block edges and handed to CacheBlock.append at the positions they were written at
            bounds = [0, prompt_len] + list(range(prompt_len + STEP_LEN, shared, STEP_LEN)) + [shared]
            bounds = sorted(set(bounds))
            self.shared_blocks = []
            for a, b in zip(bounds[:-1], bounds[1:]):
                block = ref.CacheBlock(config=config)
                pos = torch.arange(a, b, device=device)
                for layer in range(config.num_hidden_layers):
                    k, v = common.key_cache[layer][..., a:b, :], common.value_cache[layer][..., a:b, :]
                    empty = k.new_empty((1, b - a, 0))
                    block.append(k, v, layer_idx=layer, cache_kwargs=dict(cache_position=pos, cos=empty, sin=empty))
                self.shared_blocks.append(block)
            del common

        # 2. each worker's current step, written seeing only the shared blocks and itself
        self.current = [ref.CacheBlock(config=config) for _ in range(workers)]
        self.own_tokens = tokens[shared:shared + workers * own].view(workers, own)
        writer = ref.SharedCacheManager(
            cache_structure=[[*self.shared_blocks, cur] for cur in self.current], write_to=self.current)
        self.forward(writer, self.own_tokens, logits_to_keep=1)

        # 3. the step layout: shared blocks, the other workers' current steps, then one's own
        self.structure = [[*self.shared_blocks, *(self.current[v] for v in range(workers) if v != w), self.current[w]]
                          for w in range(workers)]
        self.manager = ref.SharedCacheManager(cache_structure=self.structure, write_to=self.current)

    def forward(self, manager, input_ids, **extra):
        kwargs = self.ref.model_kwargs(manager, input_ids)
        kwargs.update(extra)
        return self.model(**kwargs)

    def step(self, input_ids):
        return self.forward(self.manager, input_ids).logits[:, -1, :]

    def stored_tokens(self) -> int:
        blocks = {id(b): b for seq in self.structure for b in seq}
        return sum(b.get_seq_length(0) for b in blocks.values())

    def view_len(self, w: int) -> int:
        return sum(b.get_seq_length(0) for b in self.structure[w])


def hogwild_row(ref, model, workers, ctx, steps, history, device, gen):
    import torch

    vocab = model.config.vocab_size
    tokens = torch.randint(3, vocab, (ctx + 64,), generator=gen).to(device)
    step_tokens = torch.randint(3, vocab, (WARMUP + steps, workers, 1), generator=gen).to(device)
    setup = HogwildSetup(ref, model, workers, ctx, history, tokens)
    assert setup.view_len(0) == ctx, (setup.view_len(0), ctx)
    last = {}

    def step(i):
        last["logits"] = setup.step(step_tokens[i])

    ms, compiles = median_step_ms(step, steps, device)
    logits = last["logits"]
    done = WARMUP + steps
    info = dict(view_len=setup.view_len(0), kv_tokens=setup.stored_tokens(), compiles_in_timed_steps=compiles,
                unique_tokens=setup.shared + workers * (setup.own + done),
                logits_finite=bool(torch.isfinite(logits.float()).all().item()))
    if info["kv_tokens"] != info["unique_tokens"]:
        raise AssertionError(f"reference cache holds {info['kv_tokens']} tokens, expected {info['unique_tokens']}")
    if not info["logits_finite"]:
        raise AssertionError("non-finite logits")
    return ms, info


def _compiled_graphs() -> int:
    """Graphs torch.compile has produced so far (a rise during timed steps means recompilation)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return -1


def batched_row(model, workers, ctx, steps, device, gen):
    import torch
    import transformers

    vocab = model.config.vocab_size
    tokens = torch.randint(3, vocab, (1, ctx), generator=gen).to(device)
    step_tokens = torch.randint(3, vocab, (WARMUP + steps, workers, 1), generator=gen).to(device)
    try:
        cache = transformers.DynamicCache(config=model.config)
    except TypeError:
        cache = transformers.DynamicCache()
    for a in range(0, ctx, PREFILL_CHUNK):
        model(input_ids=tokens[:, a:a + PREFILL_CHUNK], past_key_values=cache, use_cache=True, logits_to_keep=1)
    if workers > 1:
        cache.batch_repeat_interleave(workers)
    last = {}

    def step(i):
        out = model(input_ids=step_tokens[i], past_key_values=cache, use_cache=True)
        last["logits"] = out.logits[:, -1, :]

    ms, _ = median_step_ms(step, steps, device)
    if not bool(torch.isfinite(last["logits"].float()).all().item()):
        raise AssertionError("non-finite logits")
    return ms


# ---------------------------------------------------------------------------------------------
# Correctness check: one-layer model, where a cached token's keys/values depend only on the token
# and its position, so each worker's hogwild logits must equal a fresh forward of its whole view
# ---------------------------------------------------------------------------------------------

def check_exact(impl: Path, shape: dict, device: str, workers_list, ctx: int, history_modes) -> list[str]:
    import torch

    one = dict(shape, layers=1)
    model = build_model(one, torch.float32, device, "eager")
    ref = Reference(impl, model)
    gen = torch.Generator().manual_seed(1234)
    lines = []
    for history in history_modes:
        for workers in workers_list:
            with torch.inference_mode():
                tokens = torch.randint(3, one["vocab"], (ctx + 64,), generator=gen).to(device)
                setup = HogwildSetup(ref, model, workers, ctx, history, tokens)
                new = torch.randint(3, one["vocab"], (workers, 1), generator=gen).to(device)
                got = setup.step(new).float()
                worst, cross = 0.0, 0.0
                for w in range(workers):
                    others = [v for v in range(workers) if v != w]
                    # the reference writes every worker's new token before any worker attends, so a
                    # worker also sees the token each other worker adds in this same step
                    view = torch.cat([setup.shared_tokens, *(torch.cat([setup.own_tokens[v], new[v]]) for v in others),
                                      setup.own_tokens[w], new[w]])
                    fresh = model(input_ids=view.view(1, -1)).logits[0, -1].float()
                    worst = max(worst, (fresh - got[w]).abs().max().item())
                    if others:  # the same view without the other workers' steps: must differ
                        alone = torch.cat([setup.shared_tokens, setup.own_tokens[w], new[w]])
                        solo = model(input_ids=alone.view(1, -1)).logits[0, -1].float()
                        cross = max(cross, (solo - got[w]).abs().max().item())
                scale = got.abs().max().item()
                ok = worst <= 1e-4 * max(1.0, scale) and (workers == 1 or cross > 100 * worst)
                line = (f"check history={history} W={workers} ctx={ctx}: max|hogwild - fresh view| = {worst:.2e}, "
                        f"max|hogwild - view without others| = {cross:.2e}, stored tokens {setup.stored_tokens()} "
                        f"(view {setup.view_len(0)}) -> {'ok' if ok else 'FAIL'}")
                log(line)
                lines.append(line)
                if not ok:
                    raise SystemExit("reference hogwild step does not match a fresh forward of the view")
    del model
    return lines


# ---------------------------------------------------------------------------------------------

def device_label(device: str) -> str:
    import torch
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu-{os.cpu_count()}core ({platform.machine()})"


def is_oom(exc: BaseException) -> bool:
    import torch
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def free(device: str) -> None:
    import torch
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def markdown(rows: list[dict]) -> str:
    batched = {(r["shape"], r["workers"], r["ctx"]): r["step_ms"] for r in rows if r["impl"] == "transformers-batched"}
    out = ["| device | impl | shape | dtype | workers | ctx | step_ms | vs batched |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["step_ms"]
        b = batched.get((r["shape"], r["workers"], r["ctx"]))
        ratio = f"{ms / b:.2f}" if ms is not None and b and r["impl"] != "transformers-batched" else ""
        cell = f"{ms:.3f}" if ms is not None else r.get("error", "error")
        out.append(f"| {r['device']} | {r['impl']} | {r['shape']} | {r['dtype']} | {r['workers']} | {r['ctx']} "
                   f"| {cell} | {ratio} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", default=".anchor/hogwild_llm", help="folder holding the reference shared_cache/")
    p.add_argument("--shape", choices=sorted(SHAPES), help="preset shape (models/gguf_gen.py presets)")
    for name in ("layers", "hidden", "heads", "kv-heads", "ffn", "vocab"):
        p.add_argument(f"--{name}", type=int, help="overrides the preset")
    p.add_argument("--rope-theta", type=float)
    p.add_argument("--workers", default="1,2,4,8")
    p.add_argument("--ctx", default="1024,8192")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--device-label", help="name for the device column (default: the GPU's name)")
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa")
    p.add_argument("--history", default="merged",
                   help="comma list of merged (one block for prompt + finished steps) / split (a block each)")
    p.add_argument("--no-batched", action="store_true", help="skip the transformers-batched rows")
    p.add_argument("--no-compile", action="store_true",
                   help="HOGWILD_NO_COMPILE=1: run the reference's torch.compile'd helpers eagerly")
    p.add_argument("--check", action="store_true",
                   help="first check, on a one-layer f32 copy of the shape, that each worker's logits equal "
                        "a fresh forward of its view")
    p.add_argument("--threads", type=int, help="torch CPU threads (on a shared 2-core machine: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)

    if args.no_compile:
        os.environ["HOGWILD_NO_COMPILE"] = "1"  # read by the reference when its modules are imported
    import torch
    import transformers

    shape = dict(SHAPES.get(args.shape, {}))
    for key in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "rope_theta"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    missing = [k for k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab") if k not in shape]
    if missing:
        p.error("give --shape or all of --layers --hidden --heads --kv-heads --ffn --vocab (missing: "
                + ", ".join(missing) + ")")
    if args.shape and shape == SHAPES[args.shape]:
        shape_name = args.shape
    else:
        shape_name = (f"L{shape['layers']}-d{shape['hidden']}-h{shape['heads']}/{shape['kv_heads']}"
                      f"-ff{shape['ffn']}-v{shape['vocab']}")
    dtype = getattr(torch, DTYPES[args.dtype])
    if args.threads:
        torch.set_num_threads(args.threads)
    histories = [h for h in args.history.split(",") if h]
    if any(h not in ("merged", "split") for h in histories):
        p.error("--history takes merged and/or split")
    workers_list, ctx_list = int_list(args.workers), int_list(args.ctx)
    device = args.device
    label = args.device_label or device_label(device)
    impl = Path(args.impl)
    # many distinct cache structures across rows: keep the reference's helpers compiled rather than
    # letting dynamo fall back to eager after its default 8 recompilations
    for knob in ("recompile_limit", "cache_size_limit"):
        try:
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 256))
        except Exception:  # noqa: BLE001 - the knob's name differs between torch releases
            pass

    log(f"torch {torch.__version__}, transformers {transformers.__version__}, device {label}")
    checks = []
    if args.check:
        checks = check_exact(impl, shape, device, workers_list, min(ctx_list), histories)

    log(f"building {shape_name} ({args.dtype}) on {device}")
    t0 = time.perf_counter()
    model = build_model(shape, dtype, device, args.attn)
    params = sum(x.numel() for x in model.parameters()) / 1e9
    log(f"model built in {time.perf_counter() - t0:.1f} s, {params:.2f} B params")
    ref = Reference(impl, model)
    log("adapters for this transformers release: " + (", ".join(ref.shims) or "none"))

    gen = torch.Generator().manual_seed(args.seed)
    rows = []

    def write_json():  # after every row, so that a run cut short still leaves its rows
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(dict(rows=rows, checks=checks, adapters=ref.shims, argv=sys.argv[1:]), f, indent=1)
            os.replace(tmp, args.json)

    def add(impl_name, workers, ctx, ms, error=None, **info):
        row = dict(device=label, impl=impl_name, shape=shape_name, dtype=args.dtype, workers=workers, ctx=ctx,
                   step_ms=None if ms is None else round(ms, 3), steps=args.steps, attn=args.attn,
                   torch=torch.__version__, transformers=transformers.__version__, **info)
        if error:
            row["error"] = error
        rows.append(row)
        write_json()
        log(f"{impl_name} W={workers} ctx={ctx}: " + (f"{ms:.3f} ms" if ms is not None else error)
            + (f" {info}" if info else ""))

    for ctx in ctx_list:
        for workers in workers_list:
            for history in histories:
                name = ("hogwild_llm" + ("" if history == "merged" else "-split")
                        + ("-nocompile" if args.no_compile else ""))
                log(f"{name} W={workers} ctx={ctx} ...")
                try:
                    with torch.inference_mode():
                        ms, info = hogwild_row(ref, model, workers, ctx, args.steps, history, device, gen)
                    add(name, workers, ctx, ms, history=history, **info)
                except Exception as exc:  # noqa: BLE001 - one bad row must not end the run
                    err = "oom" if is_oom(exc) else f"{type(exc).__name__}: {exc}"[:300]
                    if not is_oom(exc):
                        traceback.print_exc(file=sys.stderr)
                    add(name, workers, ctx, None, error=err, history=history)
                free(device)
            if not args.no_batched:
                log(f"transformers-batched W={workers} ctx={ctx} ...")
                try:
                    with torch.inference_mode():
                        ms = batched_row(model, workers, ctx, args.steps, device, gen)
                    add("transformers-batched", workers, ctx, ms)
                except Exception as exc:  # noqa: BLE001
                    err = "oom" if is_oom(exc) else f"{type(exc).__name__}: {exc}"[:300]
                    if not is_oom(exc):
                        traceback.print_exc(file=sys.stderr)
                    add("transformers-batched", workers, ctx, None, error=err)
                free(device)

    print(markdown(rows))
    if args.json:
        write_json()
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
